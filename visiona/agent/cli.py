"""``visiona agent``: run the agent, ``agent status`` and ``agent install-service``.

Imports only the agent's own modules (never the server stack), and those lazily,
so ``visiona agent --help`` starts fast.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from visiona.agent.policy import Policy

agent_app = typer.Typer(
    rich_markup_mode=None,
    help="The local agent: pair once, keep the tunnel up, forward streams to --forward.",
)

SessionFileOption = Annotated[
    Path | None,
    typer.Option(
        help="Where the session token is kept (0600; default ~/.config/visiona/agent-session.json)."
    ),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@agent_app.callback(invoke_without_command=True)
def agent(  # noqa: PLR0917 - one parameter per command-line option
    ctx: typer.Context,
    server: Annotated[
        str | None, typer.Option(help="The cloud's base URL, e.g. https://cloud.example.")
    ] = None,
    forward: Annotated[
        str | None, typer.Option(help="Local service HOST:PORT each stream is sent to.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Pairing token: pairs and replaces the stored session (a token already "
            "used for the stored session is ignored).",
            envvar="VISIONA_AGENT_TOKEN",
        ),
    ] = None,
    enroll_key: Annotated[
        str | None,
        typer.Option(
            "--enroll-key",
            help="Enrollment key (vek_…): pairs without a per-device token, like --token "
            "(one key enrols a fleet; the key's tags and name template apply).",
            envvar="VISIONA_AGENT_ENROLL_KEY",
        ),
    ] = None,
    session_file: SessionFileOption = None,
    name: Annotated[str | None, typer.Option(help="Device name (default: host name).")] = None,
    serial: Annotated[
        str | None,
        typer.Option(
            help="Serial number (default: the dongle's USB serial, else host name + an id "
            "unique to this agent installation, kept beside the session file)."
        ),
    ] = None,
    device_type: Annotated[
        str | None,
        typer.Option(
            "--type", help="Dongle type (default: read from the plugged-in dongle, else kl520)."
        ),
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where deployed models are written (default ~/.local/share/visiona/models)."
        ),
    ] = None,
    deploy_hook: Annotated[
        str | None,
        typer.Option(
            help="Shell command run by /bin/sh -c after each deployed model (VISIONA_MODEL_PATH, "
            "VISIONA_MODEL_ID, VISIONA_MODEL_SHA256, VISIONA_MODEL_CHIP in its environment; "
            "a non-zero exit fails the deployment). Without one a deployment is 'stored'."
        ),
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            help="Allow rule 'METHOD /path-glob' (repeatable; METHOD may be *, the glob's * "
            "matches any characters). With none, every request is forwarded."
        ),
    ] = None,
    allow_port: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-port",
            metavar="PORT",
            help="TCP port on 127.0.0.1 the cloud may open byte streams to (`visiona forward`; "
            "repeatable). None by default.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file with allow = [...], allow_ports = [...], deploy = true|false, "
            "busy_probe = URL, busy_header = true|false (options given here add to it / "
            "override it)."
        ),
    ] = None,
    no_deploy: Annotated[
        bool,
        typer.Option("--no-deploy", help="Refuse model deployments (the /visiona/ paths)."),
    ] = False,
    busy_probe: Annotated[
        str | None,
        typer.Option(help="URL polled for busy/idle (429/503, X-Visiona-Busy or {busy})."),
    ] = None,
    busy_header: Annotated[
        bool,
        typer.Option("--busy-header", help="Read X-Visiona-Busy from the local service's answers."),
    ] = False,
) -> None:
    """Run the local agent: pair once, keep the tunnel up, forward streams to --forward.

    Exits 3 when the server refuses the credentials and no usable pairing token is
    left, 2 on a bad option; stops cleanly on SIGTERM/SIGINT.
    """
    if ctx.invoked_subcommand is not None:
        return
    if server is None or forward is None:
        typer.echo(ctx.get_help())
        raise _fail("--server and --forward are required to run the agent", 2)
    if token and enroll_key:
        raise _fail("give --token or --enroll-key, not both", 2)
    if enroll_key and not enroll_key.startswith("vek_"):
        raise _fail("--enroll-key takes an enrollment key (vek_…)", 2)
    import socket  # noqa: PLC0415 - only running needs it

    from visiona.agent import main as agent_main  # noqa: PLC0415 - keep --help fast
    from visiona.agent.logs import configure_logging  # noqa: PLC0415 - idem
    from visiona.agent.policy import PolicyError  # noqa: PLC0415 - idem
    from visiona.agent.runner import AgentOptions, check_server_url  # noqa: PLC0415 - idem
    from visiona.agent.usb import detect_device_type  # noqa: PLC0415 - idem

    try:
        host, port = agent_main.parse_forward(forward)
        check_server_url(server)
        guard = _guard(
            config, allow or [], no_deploy=no_deploy, busy_probe=busy_probe, ports=allow_port
        )
    except (ValueError, PolicyError) as err:
        raise _fail(str(err), 2) from None
    configure_logging("INFO")
    options = AgentOptions(
        server=server,
        forward_host=host,
        forward_port=port,
        session_file=session_file or agent_main.default_session_file(),
        pairing_token=token or enroll_key,
        name=name or socket.gethostname(),
        serial_number=serial
        or agent_main.default_serial(
            (session_file or agent_main.default_session_file()).resolve().parent
        ),
        device_type=device_type or detect_device_type() or "kl520",
        models_dir=models_dir,
        deploy_hook=deploy_hook,
        policy=guard.policy,
        busy_probe=guard.busy_probe,
        busy_header=busy_header or guard.busy_header,
    )
    raise typer.Exit(agent_main.run_agent(options))


class _Guard:
    """The policy and busy options merged from ``--config`` and the command line."""

    def __init__(self, policy: Policy, busy_probe: str | None, *, busy_header: bool) -> None:
        self.policy = policy
        self.busy_probe = busy_probe
        self.busy_header = busy_header


def _guard(
    config: Path | None,
    allow: list[str],
    *,
    no_deploy: bool,
    busy_probe: str | None,
    ports: list[str] | None = None,
) -> _Guard:
    """Merge the config file (if any) with the options: rules and ports add up, options win."""
    from visiona.agent.policy import build_policy, load_config  # noqa: PLC0415 - keep --help fast

    data = load_config(config) if config is not None else {}
    rules = [*data.get("allow", []), *allow]
    allowed_ports: list[int | str] = [*data.get("allow_ports", []), *(ports or [])]
    deploy = bool(data.get("deploy", True)) and not no_deploy
    probe = busy_probe or data.get("busy_probe") or None
    if probe is not None and not probe.startswith(("http://", "https://")):
        raise ValueError(f"--busy-probe must be an http(s) URL, got {probe!r}")
    return _Guard(
        build_policy(rules, deploy=deploy, ports=allowed_ports),
        probe,
        busy_header=bool(data.get("busy_header")),
    )


@agent_app.command("status")
def status(
    session_file: SessionFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the paired device, its server, the last run's tunnel state and the session expiry."""
    from visiona.agent import credentials  # noqa: PLC0415 - keep --help fast
    from visiona.agent.main import default_session_file  # noqa: PLC0415 - idem

    path = session_file or default_session_file()
    creds = credentials.load_any(path)
    if creds is None:
        raise _fail(f"no agent session in {path}; run `visiona agent --token ...` to pair")
    state = credentials.load_state(path)
    info: dict[str, Any] = {
        "session_file": str(path),
        "device_id": creds.device_id,
        "server": creds.server,
        "session_expires_at": creds.expires_at,
        "tunnel": state.get("tunnel", "never connected"),
        "tunnel_since": state.get("since"),
        "last_close": state.get("last_close"),
        "policy": state.get("policy"),
        "current_model": credentials.load_current_model(path),
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    expires = _when(creds.expires_at)
    lines = [
        f"device:   {creds.device_id}",
        f"server:   {creds.server}",
        f"tunnel:   {info['tunnel']}"
        + (f" since {info['tunnel_since']}" if info["tunnel_since"] else "")
        + (f" (last close: {info['last_close']})" if info["last_close"] else ""),
        f"session:  expires {creds.expires_at}{expires}",
        f"file:     {path}",
        _model_line(info["current_model"]),
        *_policy_lines(info["policy"]),
    ]
    typer.echo("\n".join(lines))


def _model_line(model: dict[str, str] | None) -> str:
    """The model of the last successful deployment (what the agent reports as running)."""
    if model is None:
        return "model:    none deployed yet"
    return f"model:    {model['id']} (sha256 {model['sha256'][:16]}…)"


def _policy_lines(policy: dict[str, Any] | None) -> list[str]:
    """The active rules as recorded by the last run (``agent status``)."""
    if not isinstance(policy, dict):
        return ["policy:   unknown (not recorded by a run yet)"]
    rules = [str(rule) for rule in policy.get("allow", [])]
    lines = ["policy:   " + ("allow only:" if rules else "everything forwarded (no --allow)")]
    lines += [f"  allow {rule}" for rule in rules]
    lines.append("deploy:   " + ("on" if policy.get("deploy", True) else "off (--no-deploy)"))
    ports = [str(port) for port in policy.get("allow_ports", [])]
    lines.append(
        "tcp:      "
        + (f"ports {', '.join(ports)} on 127.0.0.1 (--allow-port)" if ports else "no port allowed")
    )
    return lines


def _when(iso: str) -> str:
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return ""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    days = (at - datetime.now(UTC)).total_seconds() / 86400
    return " (expired)" if days < 0 else f" (in {days:.0f} days)"


def systemd_user_dir() -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (``~/.config/systemd/user`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def service_unit(executable: str, args: list[str]) -> str:
    """The text of the ``visiona-agent.service`` systemd user unit."""
    command = " ".join(shlex.quote(part) for part in [executable, "agent", *args])
    return (
        "[Unit]\n"
        "Description=visionA agent (tunnel to the cloud for the local Kneron dongle)\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        f"ExecStart={command}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        # exit 3 = credentials refused: restarting cannot help, a new pairing is needed
        "RestartPreventExitStatus=2 3\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


@agent_app.command("install-service")
def install_service(  # noqa: PLR0917 - one parameter per command-line option
    forward: Annotated[str, typer.Option(help="Local service HOST:PORT each stream is sent to.")],
    session_file: SessionFileOption = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Where deployed models are written.")
    ] = None,
    deploy_hook: Annotated[
        str | None, typer.Option(help="Shell command (/bin/sh -c) run after each deployed model.")
    ] = None,
    allow: Annotated[
        list[str] | None, typer.Option(help="Allow rule 'METHOD /path-glob' (repeatable).")
    ] = None,
    allow_port: Annotated[
        list[str] | None,
        typer.Option("--allow-port", metavar="PORT", help="TCP port the cloud may reach."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="The agent's TOML config file (see `visiona agent`).")
    ] = None,
    no_deploy: Annotated[
        bool, typer.Option("--no-deploy", help="Refuse model deployments.")
    ] = False,
) -> None:
    """Write a systemd user unit that runs the agent with the saved session (Linux).

    Pair first (`visiona agent --server URL --token T --forward HOST:PORT`); the unit
    reuses that session, restarts the agent on failure and never holds a token.
    """
    from visiona.agent import credentials  # noqa: PLC0415 - keep --help fast
    from visiona.agent.main import default_session_file, parse_forward  # noqa: PLC0415
    from visiona.agent.policy import PolicyError  # noqa: PLC0415 - keep --help fast

    try:
        parse_forward(forward)
        _guard(config, allow or [], no_deploy=no_deploy, busy_probe=None, ports=allow_port)
    except (ValueError, PolicyError) as err:
        raise _fail(str(err), 2) from None
    path = (session_file or default_session_file()).expanduser().resolve()
    creds = credentials.load_any(path)
    if creds is None:
        raise _fail(
            f"no agent session in {path}; pair first: "
            "visiona agent --server URL --token PAIRING_TOKEN --forward HOST:PORT"
        )
    args = ["--server", creds.server, "--forward", forward, "--session-file", str(path)]
    if models_dir is not None:
        args += ["--models-dir", str(models_dir.expanduser().resolve())]
    if deploy_hook:
        args += ["--deploy-hook", deploy_hook]
    if config is not None:
        args += ["--config", str(config.expanduser().resolve())]
    for rule in allow or []:
        args += ["--allow", rule]
    for port in allow_port or []:
        args += ["--allow-port", str(port)]
    if no_deploy:
        args.append("--no-deploy")
    executable = str(Path(sys.argv[0]).resolve()) if Path(sys.argv[0]).exists() else "visiona"
    unit_dir = systemd_user_dir()
    unit_dir.mkdir(parents=True, exist_ok=True)
    unit = unit_dir / "visiona-agent.service"
    unit.write_text(service_unit(executable, args), encoding="utf-8")
    typer.echo(f"wrote {unit}")
    typer.echo(
        "enable it with: systemctl --user daemon-reload && "
        "systemctl --user enable --now visiona-agent"
    )
    typer.echo("(to keep it running after you log out: loginctl enable-linger $USER)")
