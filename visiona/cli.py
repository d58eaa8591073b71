"""The `visiona` command line: serve, migrate, seed-demo, agent and client commands."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from visiona.client import commands as client_commands
from visiona.kit import migrate as migrations
from visiona.kit.logs import configure_logging
from visiona.kit.preflight import PreflightError, check_dependencies
from visiona.kit.settings import Settings
from visiona.malloc import tune_malloc

app = typer.Typer(help="visionA cloud backend and local agent.", no_args_is_help=True)
migrate_app = typer.Typer(help="Schema migrations.", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as err:
        # Name the variable and the rule, never the value (it may be a DSN with a password).
        problems = "; ".join(
            f"VISIONA_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in err.errors(include_input=False, include_url=False)
        )
        typer.echo(f"error: invalid configuration: {problems}", err=True)
        raise typer.Exit(2) from err


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (VISIONA_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (VISIONA_PORT).")] = None,
    migrate: Annotated[
        bool, typer.Option("--migrate", help="Apply pending migrations on PostgreSQL too.")
    ] = False,
) -> None:
    """Serve the API. Embedded defaults (SQLite, in-process sessions) need no configuration."""
    import uvicorn  # noqa: PLC0415 - only the server needs it

    from visiona.app import create_app  # noqa: PLC0415 - keep client commands light
    from visiona.kit.serve import server_config  # noqa: PLC0415 - only the server needs it

    settings = _settings()
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if updates:
        settings = settings.model_copy(update=updates)
    configure_logging(settings.log_level, settings.log_format)
    _check_storage(settings)
    try:
        status = asyncio.run(check_dependencies(settings))
    except PreflightError as err:
        _fail(str(err))
    if not status.up_to_date:
        if settings.is_sqlite or migrate:
            migrations.upgrade(settings.database)
        else:
            _fail(
                f"database {settings.database_target} has {len(status.pending)} pending "
                "migration(s); run `visiona migrate up` or `visiona serve --migrate`"
            )
    seed_demo_at_startup(settings)
    tune_malloc()
    uvicorn.Server(server_config(create_app(settings), settings)).run()


@app.command("seed-demo")
def seed_demo() -> None:
    """Create the demo user, device and model if missing, and print a new pairing token.

    For development only. Idempotent: run twice, it leaves one of each.
    """
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    status = _require_reachable(settings)
    if not status.up_to_date:
        if not settings.is_sqlite:
            _fail(
                f"database {settings.database_target} has {len(status.pending)} pending "
                "migration(s); run `visiona migrate up` first"
            )
        migrations.upgrade(settings.database)
    _print_demo_seed(settings)


def seed_demo_at_startup(settings: Settings) -> None:
    """`serve`'s hook: seed demo data when VISIONA_SEED_DEMO_DATA is true (schema is current)."""
    if settings.seed_demo_data:
        _print_demo_seed(settings)


def _print_demo_seed(settings: Settings) -> None:
    from visiona.devices import demo  # noqa: PLC0415 - only this command needs it
    from visiona.kit.errors import AppError  # noqa: PLC0415 - idem

    typer.secho(demo.WARNING, err=True, fg=typer.colors.RED, bold=True)
    try:
        data = asyncio.run(demo.run_seed_demo(settings))
    except AppError as err:
        _fail(f"demo data not created: {err.message}")
        raise  # unreachable: _fail exits
    typer.echo(demo.report(data))


@migrate_app.command("up")
def migrate_up(
    to: Annotated[str, typer.Option("--to", help="Target revision.")] = "head",
) -> None:
    """Apply pending migrations."""
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    _require_reachable(settings)
    migrations.upgrade(settings.database, to)
    typer.echo(f"migrated {settings.database_target} to {to}")


@migrate_app.command("down")
def migrate_down(
    to: Annotated[
        str, typer.Option("--to", help="Target revision, or `base` for an empty schema.")
    ] = "-1",
) -> None:
    """Revert one migration (or down to --to)."""
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    _require_reachable(settings)
    migrations.downgrade(settings.database, to)
    typer.echo(f"reverted {settings.database_target} to {to}")


@migrate_app.command("status")
def migrate_status() -> None:
    """Show the current revision and what is pending."""
    settings = _settings()
    status = _require_reachable(settings)
    typer.echo(f"database: {settings.database_target}")
    typer.echo(f"current:  {status.current or 'base (empty)'}")
    typer.echo(f"head:     {status.head}")
    typer.echo(f"pending:  {', '.join(status.pending) if status.pending else 'none'}")


def _check_storage(settings: Settings) -> None:
    """Fail with one line when the model storage URL or options cannot build a store."""
    from visiona.models.storage import ObjectStorage, StorageConfigError  # noqa: PLC0415

    try:
        ObjectStorage.from_settings(settings)
    except StorageConfigError as err:
        _fail(str(err))


def _require_reachable(settings: Settings) -> migrations.MigrationStatus:
    try:
        return asyncio.run(check_dependencies(settings.model_copy(update={"redis_url": None})))
    except PreflightError as err:
        _fail(str(err))
        raise  # unreachable: _fail exits


@app.command()
def agent(  # noqa: PLR0917 - one parameter per command-line option
    server: Annotated[str, typer.Option(help="The cloud's base URL, e.g. https://cloud.example.")],
    forward: Annotated[str, typer.Option(help="Local service HOST:PORT each stream is sent to.")],
    token: Annotated[
        str | None,
        typer.Option(
            help="Pairing token (used once, when no session is stored).",
            envvar="VISIONA_AGENT_TOKEN",
        ),
    ] = None,
    session_file: Annotated[
        Path | None, typer.Option(help="Where the session token is kept (0600).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Device name (default: host name).")] = None,
    serial: Annotated[str | None, typer.Option(help="Serial number (default: host + MAC).")] = None,
    device_type: Annotated[str, typer.Option("--type", help="Dongle type.")] = "kl520",
    models_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where deployed models are written (default ~/.local/share/visiona/models)."
        ),
    ] = None,
    deploy_hook: Annotated[
        str | None,
        typer.Option(
            help="Command run after each deployed model (VISIONA_MODEL_PATH, VISIONA_MODEL_ID, "
            "VISIONA_MODEL_SHA256, VISIONA_MODEL_CHIP in its environment)."
        ),
    ] = None,
) -> None:
    """Run the local agent: pair once, keep the tunnel up, forward streams to --forward.

    Exits 3 when the server refuses the credentials; stops cleanly on SIGTERM/SIGINT.
    """
    import socket  # noqa: PLC0415 - only this command needs it

    from visiona.agent import main as agent_main  # noqa: PLC0415 - keep the server light
    from visiona.agent.runner import AgentOptions  # noqa: PLC0415 - idem

    configure_logging("INFO", "text")
    try:
        host, port = agent_main.parse_forward(forward)
    except ValueError as err:
        _fail(str(err), 2)
        raise  # unreachable: _fail exits
    options = AgentOptions(
        server=server,
        forward_host=host,
        forward_port=port,
        session_file=session_file or agent_main.default_session_file(),
        pairing_token=token,
        name=name or socket.gethostname(),
        serial_number=serial or agent_main.default_serial(),
        device_type=device_type,
        models_dir=models_dir,
        deploy_hook=deploy_hook,
    )
    code = agent_main.run_agent(options)
    if code:
        typer.echo(
            "error: the server refused the agent's credentials; "
            "pair again with a new pairing token (--token)",
            err=True,
        )
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


# -- client commands for users (visiona.client) ------------------------------------
app.command("login")(client_commands.login)
app.add_typer(client_commands.models_app, name="models")
app.add_typer(client_commands.devices_app, name="devices")
