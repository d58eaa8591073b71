"""The `visiona` command line: serve, migrate, seed-demo, agent and client commands.

Start-up matters here: client commands and the agent must not pay for the server
stack (FastAPI, SQLAlchemy, Alembic), so this module imports only typer and the
light client/agent command modules; every server command imports what it needs
inside its body.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import typer.main

from visiona import __version__
from visiona.agent.cli import agent_app
from visiona.client import commands as client_commands

if TYPE_CHECKING:
    from visiona.kit.migrate import MigrationStatus
    from visiona.kit.settings import Settings

app = typer.Typer(
    rich_markup_mode=None,
    help="visionA cloud backend and local agent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a bug prints a plain traceback, a user error one line
)
migrate_app = typer.Typer(rich_markup_mode=None, help="Schema migrations.", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")

T = TypeVar("T")
VerboseOption = Annotated[
    bool, typer.Option("-v", "--verbose", help="Show the migration tool's own log lines.")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"visiona {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="VISIONA_API_KEY",
            show_envvar=True,
            help="Authenticate the client commands with this API key (vak_...) instead of "
            "the saved login; it acts in its own organisation.",
        ),
    ] = None,
) -> None:
    """visionA cloud backend and local agent."""
    del version  # handled by its eager callback
    client_commands.use_api_key(api_key)


def _arun(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # noqa: PLC0415 - server commands only: asyncio costs start-up time

    return asyncio.run(coro)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    from pydantic import ValidationError  # noqa: PLC0415 - server commands only

    from visiona.kit.settings import Settings  # noqa: PLC0415 - keep client commands light

    try:
        return Settings()
    except ValidationError as err:
        # Name the variable and the rule, never the value (it may be a DSN with a password).
        problems = "; ".join(
            f"VISIONA_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else str(e["msg"]).removeprefix("Value error, ")
            for e in err.errors(include_input=False, include_url=False)
        )
        typer.echo(f"error: invalid configuration: {problems}", err=True)
        raise typer.Exit(2) from err


def _logging(settings: Settings, *, verbose: bool = True) -> None:
    """The configured log set-up; Alembic's INFO lines only when ``verbose``."""
    from visiona.kit.logs import configure_logging  # noqa: PLC0415 - server commands only

    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger("alembic").setLevel(logging.NOTSET if verbose else logging.WARNING)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (VISIONA_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (VISIONA_PORT).")] = None,
    migrate: Annotated[
        bool, typer.Option("--migrate", help="Apply pending migrations on PostgreSQL too.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Node processes sharing the port (SO_REUSEPORT); more than 1 needs "
            "VISIONA_REDIS_URL.",
        ),
    ] = 1,
    worker: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Serve the API. Embedded defaults (SQLite, sessions in it) need no configuration."""

    from visiona.app import create_app  # noqa: PLC0415 - keep client commands light
    from visiona.kit.listen import bind_socket  # noqa: PLC0415 - idem
    from visiona.kit.serve import server_config  # noqa: PLC0415 - idem
    from visiona.malloc import tune_malloc  # noqa: PLC0415 - idem

    settings = _settings()
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if updates:
        settings = settings.model_copy(update=updates)
    _logging(settings)
    if workers > 1 and not settings.redis_url:
        _fail(
            "--workers needs VISIONA_REDIS_URL (workers share sessions, rate limits "
            "and the tunnel registry in Redis)",
            2,
        )
    _check_storage(settings)
    try:
        listener = bind_socket(
            settings.host, settings.port, reuse_port=workers > 1 or worker is not None
        )
    except OSError as err:
        _fail(f"cannot listen on {settings.host}:{settings.port} ({err.strerror or err})")
        raise  # unreachable: _fail exits
    sockets = [listener]
    if worker is not None:
        from visiona.cluster.workers import worker_settings  # noqa: PLC0415 - workers only

        internal = bind_socket(settings.host, 0)
        sockets.append(internal)
        settings = worker_settings(settings, worker, internal)
    elif settings.clustered and not settings.node_url:
        # port 0 works: a cluster node tells the others the address it really got
        bound_host, bound_port = listener.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        settings = settings.model_copy(update={"node_url": f"http://{shown}:{bound_port}"})
    _prepare_database(settings, migrate=migrate)
    if workers > 1:
        _supervise(settings, listener, workers)
        return
    if worker is None:  # the supervisor seeded already
        seed_demo_at_startup(settings)
    tune_malloc()
    _raise_fd_limit(settings)
    config = server_config(create_app(settings), settings)
    _make_server(config, listener, settings).run(sockets=sockets)


def _raise_fd_limit(settings: Settings) -> None:
    """Soft limit on open files up to the hard one (one socket per tunnel), logged."""
    from visiona.kit.fdlimit import raise_nofile_limit  # noqa: PLC0415 - server only

    before, after = raise_nofile_limit()
    shown = "unlimited" if after < 0 else str(after)
    tunnels = "unlimited" if after < 0 else str(max(0, after - settings.tunnel_fd_reserve))
    logging.getLogger("visiona.serve").info(
        "file descriptors: soft limit %s%s; up to %s tunnels (%s kept for the API, "
        "database and Redis: VISIONA_TUNNEL_FD_RESERVE)",
        shown,
        f" (raised from {before})" if after != before else "",
        tunnels,
        settings.tunnel_fd_reserve,
    )


def _prepare_database(settings: Settings, *, migrate: bool) -> None:
    """Reach every dependency; apply migrations on SQLite or when asked, else refuse."""
    from visiona.kit import migrate as migrations  # noqa: PLC0415 - server commands only
    from visiona.kit.preflight import PreflightError, check_dependencies  # noqa: PLC0415

    try:
        status = _arun(check_dependencies(settings))
    except PreflightError as err:
        _fail(str(err))
        raise  # unreachable: _fail exits
    if not status.up_to_date:
        if settings.is_sqlite or migrate:
            migrations.upgrade(settings.database)
        else:
            _fail(
                f"database {settings.database_target} has {len(status.pending)} pending "
                "migration(s); run `visiona migrate up` or `visiona serve --migrate`"
            )


def _supervise(settings: Settings, listener: Any, count: int) -> None:
    """Run ``count`` workers on the reserved port until stopped (see visiona.cluster.workers)."""
    from visiona.cluster.workers import Supervisor, worker_env  # noqa: PLC0415 - idem

    seed_demo_at_startup(settings)
    bound_host, bound_port = listener.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    logging.getLogger("visiona.serve").info(
        "visiona running on http://%s:%d with %d workers (Ctrl+C to stop)",
        shown,
        bound_port,
        count,
    )
    # The reservation stays bound (not listening) so the port stays ours meanwhile.
    code = Supervisor(count, settings.host, bound_port, worker_env(settings)).run()
    listener.close()
    if code:
        raise typer.Exit(code)


def _make_server(config: Any, listener: Any, settings: Settings) -> Any:
    from visiona.kit.serve import NodeServer  # noqa: PLC0415 - only the server needs it

    return NodeServer(config, listener, settings)


@app.command("seed-demo")
def seed_demo(verbose: VerboseOption = False) -> None:
    """Create the demo user, device and model if missing, and print a new pairing token.

    For development only. Idempotent: run twice, it leaves one of each.
    """
    settings = _settings()
    _logging(settings, verbose=verbose)
    status = _require_reachable(settings)
    if not status.up_to_date:
        if not settings.is_sqlite:
            _fail(
                f"database {settings.database_target} has {len(status.pending)} pending "
                "migration(s); run `visiona migrate up` first"
            )
        _migrate("upgrade", settings, "head")
    _print_demo_seed(settings)


def seed_demo_at_startup(settings: Settings) -> None:
    """`serve`'s hook: seed demo data when VISIONA_SEED_DEMO_DATA is true (schema is current)."""
    if settings.seed_demo_data:
        _print_demo_seed(settings)


def _print_demo_seed(settings: Settings) -> None:
    from visiona.demo import seed as demo  # noqa: PLC0415 - only this command needs it
    from visiona.kit.errors import AppError  # noqa: PLC0415 - idem

    typer.secho(demo.WARNING, err=True, fg=typer.colors.RED, bold=True)
    try:
        data = _arun(demo.run_seed_demo(settings))
    except AppError as err:
        _fail(f"demo data not created: {err.message}")
        raise  # unreachable: _fail exits
    typer.echo(demo.report(data))


def _migrate(direction: str, settings: Settings, revision: str) -> None:
    """Run Alembic's upgrade/downgrade; an unknown revision is one line, exit 2."""
    from alembic.util.exc import CommandError  # noqa: PLC0415 - server commands only

    from visiona.kit import migrate as migrations  # noqa: PLC0415 - idem

    run = migrations.upgrade if direction == "upgrade" else migrations.downgrade
    try:
        run(settings.database, revision)
    except CommandError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        _fail(f"cannot migrate to {revision!r}: {first}", 2)


@migrate_app.command("up")
def migrate_up(
    to: Annotated[str, typer.Option("--to", help="Target revision.")] = "head",
    verbose: VerboseOption = False,
) -> None:
    """Apply pending migrations."""
    settings = _settings()
    _logging(settings, verbose=verbose)
    _require_reachable(settings)
    _migrate("upgrade", settings, to)
    typer.echo(f"migrated {settings.database_target} to {to}")


@migrate_app.command("down")
def migrate_down(
    to: Annotated[
        str, typer.Option("--to", help="Target revision, or `base` for an empty schema.")
    ] = "-1",
    verbose: VerboseOption = False,
) -> None:
    """Revert one migration (or down to --to)."""
    settings = _settings()
    _logging(settings, verbose=verbose)
    _require_reachable(settings)
    _migrate("downgrade", settings, to)
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


@client_commands.audit_app.command("prune")
def audit_prune(
    days: Annotated[
        int | None,
        typer.Option("--days", min=1, help="Keep this many days (VISIONA_AUDIT_RETENTION_DAYS)."),
    ] = None,
) -> None:
    """Delete audit events older than the retention, 1000 rows per short transaction."""
    from visiona.audit.retention import prune  # noqa: PLC0415 - server commands only
    from visiona.kit.database import Database  # noqa: PLC0415 - idem

    settings = _settings()
    _logging(settings, verbose=False)
    status = _require_reachable(settings)
    if not status.up_to_date:
        _fail(
            f"database {settings.database_target} has {len(status.pending)} pending "
            "migration(s); run `visiona migrate up` first"
        )
    retention = days or settings.audit_retention_days

    async def run() -> int:
        db = Database(settings.build_engine(), settings.database_target)
        try:
            return await prune(db, retention)
        finally:
            await db.dispose()

    deleted = _arun(run())
    typer.echo(f"deleted {deleted} audit event(s) older than {retention} day(s)")


def _check_storage(settings: Settings) -> None:
    """Fail with one line when the model storage URL or options cannot build a store."""
    from visiona.models.storage import ObjectStorage, StorageConfigError  # noqa: PLC0415

    try:
        ObjectStorage.from_settings(settings)
    except StorageConfigError as err:
        _fail(str(err))


def _require_reachable(settings: Settings) -> MigrationStatus:
    from visiona.kit.preflight import PreflightError, check_dependencies  # noqa: PLC0415

    try:
        return _arun(check_dependencies(settings.model_copy(update={"redis_url": None})))
    except PreflightError as err:
        _fail(str(err))
        raise  # unreachable: _fail exits


def plain_metavars(command: Any) -> Any:
    """Replace typer's ``<bool>``/``<str>``/``<list[str]>`` type labels in help, in place.

    Flags show nothing after their name, options show their name in capitals
    (``--server SERVER``), repeatable ones too; explicit metavars are kept.
    """
    params = list(getattr(command, "params", []))
    help_option = command.get_help_option(typer.Context(command))
    if help_option is not None:
        params.append(help_option)
    for param in params:
        if param.param_type_name == "argument":
            _plain_usage(param)
            continue
        if param.param_type_name != "option" or param.metavar is not None:
            continue
        if param.is_flag:
            param.metavar = ""
        elif not param.type_descriptor.is_choice:  # choices stay listed: <kl520|kl720|...>
            param.metavar = str(param.name).upper()
    for sub in getattr(command, "commands", {}).values():
        plain_metavars(sub)
    return command


def _plain_usage(argument: Any) -> None:
    """Usage lines in the usual convention: ``DEVICE MODEL``, ``[NAME]``, ``FILE...``.

    typer writes a required argument as ``{DEVICE}`` and shows a lower-case name
    (``{file}``) when no metavar is given.
    """
    name = str(argument.metavar or argument.name).upper()
    shown = name if argument.required else f"[{name}]"
    if argument.nargs != 1:
        shown += "..."
    argument._usage_display_name = lambda: shown  # typer's hook for the usage line


def command() -> Any:
    """The click command tree of ``visiona`` with plain help labels."""
    return plain_metavars(typer.main.get_command(app))


def _help_fast(root: Any, args: list[str]) -> bool:
    """Print the help of ``visiona SUB ... --help`` straight away (True), as ``--help``.

    Parsing a subcommand's line makes typer build its parameters' converters, which
    imports pydantic (about half a second); help needs none of it. Only a line of
    subcommand names followed by ``--help`` takes this path; anything else is parsed
    as usual.
    """
    if not args or args[-1] not in {"--help", "-h"} or len(args) < 2:
        return False
    ctx = typer.Context(root, info_name="visiona")
    command = root
    for name in args[:-1]:
        sub = getattr(command, "commands", {}).get(name)
        if sub is None:
            return False
        ctx = typer.Context(sub, info_name=name, parent=ctx)
        command = sub
    if args[-1] == "-h" and "-h" not in command.get_help_option_names(ctx):
        return False
    typer.echo(command.get_help(ctx))
    return True


def main() -> None:
    """Console-script entry point."""
    root = command()
    if _help_fast(root, sys.argv[1:]):
        sys.exit(0)
    sys.exit(root())


# -- the agent (visiona.agent.cli) and client commands for users (visiona.client) ----
app.add_typer(agent_app, name="agent")
client_commands.register(app)
