"""Client commands: login/logout, models, devices, deployments, pairing tokens, audit trail,
live events (:mod:`visiona.client.events`), organisations, members, API keys, webhooks
(:mod:`visiona.client.webhooks`), and ``forward`` (a TCP port of a device's PC,
:mod:`visiona.client.forward`).

They talk to a running server over HTTP with the session token saved by ``login``
(:mod:`visiona.client.config`), or with an API key instead (``visiona --api-key`` or
``VISIONA_API_KEY``: for automation, no login; the key acts in its own organisation).
With a login, they act in the organisation chosen with ``visiona org switch`` (sent as
``X-Visiona-Org``), else the personal one. Every failure prints one line,
``error: ...``, on stderr and exits with status 1.
"""

from __future__ import annotations

import functools
import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar
from urllib.parse import quote

import typer

from visiona.client.config import (
    Credentials,
    forget_credentials,
    forget_org,
    load_credentials,
    load_org,
    save_credentials,
    save_org,
)
from visiona.client.errors import ClientError
from visiona.wire import TargetChip

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

    from visiona.client.http import ApiClient

_LOGGER = logging.getLogger(__name__)
DEFAULT_SERVER = "http://127.0.0.1:8080"

models_app = typer.Typer(
    rich_markup_mode=None, help="Upload, list and download your AI models.", no_args_is_help=True
)
devices_app = typer.Typer(rich_markup_mode=None, help="Your paired devices.", no_args_is_help=True)
deployments_app = typer.Typer(
    rich_markup_mode=None, help="Models deployed to your devices.", no_args_is_help=True
)
pairing_app = typer.Typer(
    rich_markup_mode=None,
    help="One-time pairing tokens that let an agent join your account.",
    no_args_is_help=True,
)
enroll_app = typer.Typer(
    rich_markup_mode=None,
    help="Reusable enrollment keys: one key pairs a whole fleet of PCs.",
    no_args_is_help=True,
)
rollouts_app = typer.Typer(
    rich_markup_mode=None,
    help="Staged model rollouts to many devices: canary, batches, auto-abort, rollback.",
    no_args_is_help=True,
)

audit_app = typer.Typer(
    rich_markup_mode=None,
    help="The audit trail: who did what to your account and devices.",
    no_args_is_help=True,
)

org_app = typer.Typer(
    rich_markup_mode=None,
    help="Your organisations, and which one the commands act in.",
    no_args_is_help=True,
)
members_app = typer.Typer(
    rich_markup_mode=None,
    help="Members of the organisation you act in (needs a login, not an API key).",
    no_args_is_help=True,
)
keys_app = typer.Typer(
    rich_markup_mode=None,
    help="API keys of the organisation you act in, for automation.",
    no_args_is_help=True,
)

#: The API key of this invocation (``visiona --api-key`` or ``VISIONA_API_KEY``), set by
#: the root command before any subcommand runs; None: the saved login.
_API_KEY: list[str] = []

P = ParamSpec("P")
R = TypeVar("R")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="VISIONA_SERVER",
        help="Server URL (default: the one saved by `visiona login`).",
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`ClientError` (or a local file error) into one line and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ClientError as err:
            raise _fail(str(err)) from None
        except OSError as err:
            raise _fail(f"{err.strerror or type(err).__name__}: {err.filename or ''}") from None

    return wrapper


def use_api_key(key: str | None) -> None:
    """Authenticate this invocation's commands with ``key`` (None: the saved login)."""
    _API_KEY.clear()
    if key:
        _API_KEY.append(key.strip())


def _auth(server: str | None) -> tuple[str, str, str | None]:
    """The server, the bearer (API key or session token) and the organisation to act in."""
    credentials = load_credentials()
    if _API_KEY:
        if not _API_KEY[0].startswith("vak_"):
            raise _fail("--api-key / VISIONA_API_KEY is not an API key (vak_...)")
        base = server or (credentials.server if credentials else DEFAULT_SERVER)
        return base, _API_KEY[0], None  # a key acts in its own organisation
    if credentials is None:
        raise _fail("not logged in; run `visiona login` first")
    return server or credentials.server, credentials.token, load_org()


@contextmanager
def _session(server: str | None) -> Iterator[ApiClient]:
    from visiona.client.http import ApiClient  # noqa: PLC0415 - httpx only when a command runs

    base, token, org_id = _auth(server)
    with ApiClient(base, token, org_id=org_id) as api:
        yield api


def _progress() -> Progress:
    # rich is imported where it is used: `--help` and `--version` need none of it
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=False),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,  # the summary line after it says what happened
        disable=not console.is_terminal,  # no bar in pipes and logs: stderr stays one line
    )


def _size(count: int) -> str:
    """A size in the decimal units (kB, MB, GB) the progress bars use too."""
    from rich import filesize  # noqa: PLC0415 - see _progress

    return str(filesize.decimal(count))


def _path_id(value: str) -> str:
    return quote(value, safe="")


def _is_uuid(value: str) -> bool:
    import uuid  # noqa: PLC0415 - cheap, but only resolving needs it

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _resolve(api: ApiClient, kind: str, path: str, ref: str) -> str:
    """The id of the one ``kind`` (``device``/``model``) that ``ref`` names.

    ``ref`` is a full id, a unique id prefix or a unique name (exact, then ignoring
    case), as docker and kubectl accept; anything else is one clear error line.
    """
    if _is_uuid(ref):
        return ref
    items = list(api.pages(path, {"limit": "200"}))
    for matches in (
        [i for i in items if i["name"] == ref],
        [i for i in items if str(i["name"]).casefold() == ref.casefold()],
        [i for i in items if str(i["id"]).startswith(ref.lower())] if ref.strip() else [],
    ):
        if len(matches) == 1:
            return str(matches[0]["id"])
        if len(matches) > 1:
            named = ", ".join(f"{i['id']} ({i['name']})" for i in matches[:5])
            more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
            raise _fail(
                f"ambiguous: {ref!r} matches {len(matches)} {kind}s: {named}{more}; "
                "give more of the id"
            )
    raise _fail(f"no {kind} named {ref!r} or with an id starting with it")


def _device_id(api: ApiClient, ref: str) -> str:
    return _path_id(_resolve(api, "device", "/devices", ref))


def _model_id(api: ApiClient, ref: str) -> str:
    return _path_id(_resolve(api, "model", "/models", ref))


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value))


# -- login ------------------------------------------------------------------------


@one_line_errors
def login(
    email: Annotated[
        str | None, typer.Option(help="Your account's email (asked for when not given).")
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the password from the first line of standard input."
        ),
    ] = False,
    server: Annotated[
        str, typer.Option("--server", envvar="VISIONA_SERVER", help="Server URL.")
    ] = DEFAULT_SERVER,
) -> None:
    """Sign in and save the session token (0600 file in your config directory).

    The password is asked for, hidden, on a terminal; with --password-stdin (or when
    standard input is not a terminal) it is the first line of standard input.
    """
    import sys  # noqa: PLC0415 - cheap; only this command reads stdin

    from visiona.client.http import ApiClient, check_server  # noqa: PLC0415 - httpx only when a command runs

    try:
        check_server(server)
    except ClientError as err:
        raise _fail(str(err)) from None
    if email is None:
        email = str(typer.prompt("Email")).strip()
    if password_stdin or not sys.stdin.isatty():
        if not password_stdin:  # piped without the flag: still say what is read
            typer.echo("Password: ")
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise _fail("no password on standard input")
    else:
        password = str(typer.prompt("Password", hide_input=True))
    with ApiClient(server) as api:
        token = api.login(email, password)
    path = save_credentials(Credentials(server=server.rstrip("/"), token=token, email=email))
    forget_org()  # a new login acts in its personal organisation until `org switch`
    typer.echo(f"logged in to {server} as {email} (session saved in {path})")


@one_line_errors
def logout() -> None:
    """Sign out: end the session on the server and delete the saved session file."""
    from visiona.client.http import ApiClient  # noqa: PLC0415 - httpx only when a command runs

    credentials = load_credentials()
    if credentials is None:
        typer.echo("not logged in")
        return
    try:
        with ApiClient(credentials.server, credentials.token) as api:
            api.call("POST", "/auth/logout", login_hint=False)
    except ClientError as err:
        typer.echo(f"warning: the server did not end the session: {err}", err=True)
    forget_credentials()
    forget_org()
    typer.echo(f"logged out of {credentials.server}")


# -- models -----------------------------------------------------------------------


@models_app.command("upload")
@one_line_errors
def upload(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The .nef file.")
    ],
    chip: Annotated[
        TargetChip, typer.Option("--chip", case_sensitive=False, help="The target chip.")
    ],
    name: Annotated[str | None, typer.Option("--name", help="Defaults to the file name.")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="A class label (repeat for several).")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Upload a model file, with a progress bar."""
    size = file.stat().st_size
    with _session(server) as api, _progress() as bar:
        task = bar.add_task(f"uploading {file.name}", total=size)
        model = api.upload_model(
            file,
            chip=str(chip).lower(),
            name=name,
            labels=label or [],
            progress=lambda n: bar.advance(task, n),
        )
    typer.echo(f"uploaded {model['id']}  {model['name']}  {_size(model['file_size'])}")
    typer.echo(f"sha256 {model['sha256']}")


@models_app.command("list")
@one_line_errors
def list_models(
    chip: Annotated[str | None, typer.Option("--chip", help="Only this target chip.")] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="uploaded, converted or builtin.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server: ServerOption = None,
) -> None:
    """List your models, newest first."""
    params = {k: v for k, v in (("chip", chip), ("source", source)) if v}
    params["limit"] = "200"
    with _session(server) as api:
        items = list(api.pages("/models", params))
    if as_json:
        for item in items:
            typer.echo(json.dumps(item))
        return
    typer.echo(render_models(items))


def render_models(items: list[dict[str, Any]]) -> str:
    """The models as a plain table (one line per model)."""
    table = _table("id", "name", "chip", "size", "labels", "created")
    for item in items:
        table.add_row(
            str(item["id"]),
            str(item["name"]),
            str(item["target_chip"]),
            _size(int(item["file_size"])),
            ", ".join(item["labels"]),
            str(item["created_at"])[:19].replace("T", " "),
        )
    return _text(table) + f"{len(items)} model(s)"


def _table(*columns: str) -> Table:
    from rich.table import Table  # noqa: PLC0415 - see _progress

    return Table(*columns)


def _text(table: Table) -> str:
    from rich.console import Console  # noqa: PLC0415 - see _progress

    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(table)
    out = console.file
    assert isinstance(out, io.StringIO)  # noqa: S101 - set two lines above
    return out.getvalue()


@models_app.command("download")
@one_line_errors
def download(
    model_id: Annotated[
        str,
        typer.Argument(metavar="MODEL", help="The model: its id, a unique id prefix or its name."),
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", dir_okay=False, help="Defaults to <name>.nef here."),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Download a model's file, with a progress bar, and check its sha256."""
    with _session(server) as api:
        model_id = _resolve(api, "model", "/models", model_id)
        dest = output or _default_destination(api.call("GET", f"/models/{_path_id(model_id)}"))
        with _progress() as bar:
            task = bar.add_task(f"downloading {dest.name}", total=None)
            model = api.download_model(
                model_id,
                dest,
                on_start=lambda total: bar.update(task, total=total),
                progress=lambda n: bar.advance(task, n),
            )
    typer.echo(f"saved {dest}  {_size(model['file_size'])}  sha256 {model['sha256']} ok")


def _default_destination(model: dict[str, Any]) -> Path:
    """``<name>.nef`` in the current directory (only the name's last path part)."""
    filename = Path(str(model["name"]).replace("\\", "/")).name or str(model["id"])
    return Path(filename if filename.endswith(".nef") else f"{filename}.nef")


# -- devices ----------------------------------------------------------------------


SelectOption = Annotated[
    str | None,
    typer.Option(
        "--select",
        "-l",
        metavar="SELECTOR",
        help="Only the devices a tag selector selects, e.g. 'site=lab,chip in (kl520),!retired'.",
    ),
]


def _selected(api: ApiClient, selector: str | None) -> list[dict[str, Any]]:
    """Every device (the ones ``selector`` selects, when given), all pages."""
    params = {"limit": "200"}
    if selector is not None:
        params["selector"] = selector
    return list(api.pages("/devices", params))


@devices_app.command("list")
@one_line_errors
def list_devices(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    select: SelectOption = None,
    server: ServerOption = None,
) -> None:
    """List your devices with their tunnel and USB status, whether their service is busy,
    and their tags (built-in ones aside)."""
    with _session(server) as api:
        items = _selected(api, select)
    if as_json:
        for item in items:
            typer.echo(json.dumps(item))
        return
    typer.echo(render_devices(items))


def render_devices(items: list[dict[str, Any]]) -> str:
    """The devices as a plain table (one line per device)."""
    table = _table("id", "name", "type", "serial", "remote", "usb", "service", "tags")
    for item in items:
        table.add_row(
            str(item.get("id", "")),
            str(item.get("name", "")),
            str(item.get("device_type") or ""),
            str(item.get("serial_number") or ""),
            str(item.get("remote_status", "")),
            str(item.get("status", "")),
            "busy" if item.get("busy") else "idle",
            _user_tags(item),
        )
    return _text(table) + f"{len(items)} device(s)"


#: The built-in tags (the device type): the table shows them in its "type" column.
_BUILTIN_TAGS = ("chip", "type")


def _user_tags(item: dict[str, Any]) -> str:
    tags = item.get("tags") or {}
    return ",".join(f"{k}={v}" for k, v in tags.items() if k not in _BUILTIN_TAGS)


@devices_app.command("tag")
@one_line_errors
def tag_devices(
    words: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="DEVICE|KEY=VALUE",
            help="Devices (id, unique id prefix or name) and the tags to set on each; a word "
            "with '=' is a tag.",
        ),
    ] = None,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", "-r", metavar="KEY", help="Remove this tag (repeat for several)."),
    ] = None,
    select: Annotated[
        str | None,
        typer.Option(
            "--select",
            "-l",
            metavar="SELECTOR",
            help="Tag every device this selector selects (instead of naming devices).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server: ServerOption = None,
) -> None:
    """Set and remove tags on several devices at once (one PATCH per device): `visiona
    devices tag lab-1 lab-2 site=lab room=2 -r old`, or `--select 'site=lab' retired=yes`.
    A device that fails is reported and the others are still tagged (exit 1)."""
    refs = [w for w in words or [] if "=" not in w]
    set_tags: dict[str, str] = {}
    for word in words or []:
        if "=" in word:
            key, _, value = word.partition("=")
            set_tags[key.strip()] = value.strip()
    removed = list(remove or [])
    if not set_tags and not removed:
        raise _fail("nothing to do: give KEY=VALUE tags to set or -r KEY to remove")
    if bool(refs) == (select is not None):
        raise _fail("name the devices or give --select SELECTOR (one of the two)")
    body = {"set": set_tags, "remove": removed}
    failed = 0
    with _session(server) as api:
        if select is not None:
            targets = [(str(item["id"]), str(item["name"])) for item in _selected(api, select)]
        else:
            targets = [(_resolve(api, "device", "/devices", ref), ref) for ref in refs]
        for device_id, label in targets:
            try:
                device = api.call("PATCH", f"/devices/{_path_id(device_id)}/tags", json=body)
            except ClientError as err:
                failed += 1
                typer.echo(f"error: {label}: {err}", err=True)
                continue
            if as_json:
                _echo_json(device)
            else:
                typer.echo(f"tagged {device['id']} {device['name']}: {_user_tags(device) or '-'}")
    if not targets:
        typer.echo("no device selected", err=True)
    if failed:
        raise typer.Exit(1)


@devices_app.command("show")
@one_line_errors
def show_device(
    device_id: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE", help="The device: its id, a unique id prefix or its name."
        ),
    ],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Show one device (and a recent tunnel conflict: two agents connected as it)."""
    with _session(server) as api:
        device = api.call("GET", f"/devices/{_device_id(api, device_id)}")
        recent = api.call(
            "GET",
            f"/devices/{device['id']}/audit-events",
            params={"action": "tunnel.conflict", "limit": "1"},
        )
    shown = dict(device)
    conflict = _recent_conflict(recent.get("items") or [])
    if conflict is not None:
        shown["tunnel_conflict"] = conflict
    if as_json:
        _echo_json(shown)
        return
    typer.echo(_fields(shown))


#: A ``tunnel.conflict`` event this recent is shown by ``devices show``.
CONFLICT_SHOWN_FOR = 600.0


def _recent_conflict(items: list[dict[str, Any]]) -> str | None:
    """``"<cause> (since …); fix: <fix>"`` for a conflict recorded in the last 10 min."""
    from datetime import UTC, datetime  # noqa: PLC0415 - only this command needs it

    if not items:
        return None
    event = items[0]
    occurred = datetime.fromisoformat(str(event["occurred_at"]).replace("Z", "+00:00"))
    if (datetime.now(UTC) - occurred).total_seconds() > CONFLICT_SHOWN_FOR:
        return None
    detail = event.get("detail") or {}
    when = occurred.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{detail.get('reason', 'tunnel conflict')} (since {when}); fix: {detail.get('fix', '')}"


def _fields(item: dict[str, Any]) -> str:
    width = max(len(key) for key in item)
    return "\n".join(f"{key + ':':<{width + 1}} {_plain(value)}" for key, value in item.items())


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


@devices_app.command("rename")
@one_line_errors
def rename_device(
    device_id: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE", help="The device: its id, a unique id prefix or its name."
        ),
    ],
    name: Annotated[str, typer.Argument(metavar="NAME", help="The new name.")],
    server: ServerOption = None,
) -> None:
    """Rename a device."""
    with _session(server) as api:
        device = api.call("PATCH", f"/devices/{_device_id(api, device_id)}", json={"name": name})
    typer.echo(f"renamed {device['id']} to {device['name']}")


@devices_app.command("unpair")
@one_line_errors
def unpair_device(
    device_id: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE", help="The device: its id, a unique id prefix or its name."
        ),
    ],
    yes: YesOption = False,
    server: ServerOption = None,
) -> None:
    """Unpair a device: its tokens are revoked and its tunnel closed (asks first)."""
    with _session(server) as api:
        device = api.call("GET", f"/devices/{_device_id(api, device_id)}")
        if not yes and not typer.confirm(
            f"unpair {device['name']} ({device['id']})? its agent will need a new pairing"
        ):
            raise _fail("not unpaired")
        api.call("DELETE", f"/devices/{_path_id(device['id'])}")
    typer.echo(f"unpaired {device['id']}")


@devices_app.command("deploy")
@one_line_errors
def deploy(
    device_id: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE", help="The device: its id, a unique id prefix or its name."
        ),
    ],
    model_id: Annotated[
        str,
        typer.Argument(metavar="MODEL", help="The model: its id, a unique id prefix or its name."),
    ],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Send a model to a device and wait for the agent's answer (exit 1 when it fails)."""
    from rich.console import Console  # noqa: PLC0415 - see _progress

    console = Console(stderr=True)
    with _session(server) as api:
        model = api.call("GET", f"/models/{_model_id(api, model_id)}")
        device_id = _resolve(api, "device", "/devices", device_id)
        with console.status(
            f"deploying {model['name']} ({_size(int(model['file_size']))}) to {device_id}"
        ):
            record = api.call(
                "POST",
                f"/devices/{_path_id(device_id)}/deployments",
                json={"model_id": model["id"]},
            )
    if as_json:
        _echo_json(record)
    if record["status"] not in ("succeeded", "stored"):
        raise _fail(f"deployment {record['id']} {record['status']}: {record.get('error') or ''}")
    if as_json:
        return
    if record["status"] == "stored":
        detail = record.get("detail") or "stored on the PC; no deploy hook configured"
        typer.echo(f"stored {model['name']} on {device_id}: {detail} (deployment {record['id']})")
    else:
        typer.echo(f"deployed {model['name']} to {device_id} (deployment {record['id']})")


@deployments_app.command("list")
@one_line_errors
def list_deployments(
    device_id: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE", help="The device: its id, a unique id prefix or its name."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server: ServerOption = None,
) -> None:
    """List a device's deployments, newest first."""
    with _session(server) as api:
        path = f"/devices/{_device_id(api, device_id)}/deployments"
        items = list(api.pages(path, {"limit": "200"}))
        names = {} if as_json else {m["id"]: m["name"] for m in api.pages("/models", {})}
    if as_json:
        for item in items:
            _echo_json(item)
        return
    table = _table("id", "model", "status", "details", "created")
    for item in items:
        table.add_row(
            str(item["id"]),
            str(names.get(item["model_id"], "(deleted model)")),
            str(item["status"]),
            str(item.get("detail") or item.get("error") or ""),
            str(item["created_at"])[:19].replace("T", " "),
        )
    typer.echo(_text(table) + f"{len(items)} deployment(s)")


# -- models: show, rename, delete ---------------------------------------------------


@models_app.command("show")
@one_line_errors
def show_model(
    model_id: Annotated[
        str,
        typer.Argument(metavar="MODEL", help="The model: its id, a unique id prefix or its name."),
    ],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Show one model."""
    with _session(server) as api:
        model = api.call("GET", f"/models/{_model_id(api, model_id)}")
    if as_json:
        _echo_json(model)
        return
    shown = dict(model)
    if "file_size" in shown:
        shown["file_size"] = _size(int(shown["file_size"]))
    typer.echo(_fields(shown))


@models_app.command("rename")
@one_line_errors
def rename_model(
    model_id: Annotated[
        str,
        typer.Argument(metavar="MODEL", help="The model: its id, a unique id prefix or its name."),
    ],
    name: Annotated[str, typer.Argument(metavar="NAME", help="The new name.")],
    server: ServerOption = None,
) -> None:
    """Rename a model."""
    with _session(server) as api:
        model = api.call("PATCH", f"/models/{_model_id(api, model_id)}", json={"name": name})
    typer.echo(f"renamed {model['id']} to {model['name']}")


@models_app.command("delete")
@one_line_errors
def delete_model(
    model_id: Annotated[
        str,
        typer.Argument(metavar="MODEL", help="The model: its id, a unique id prefix or its name."),
    ],
    yes: YesOption = False,
    server: ServerOption = None,
) -> None:
    """Delete a model and its file (asks first)."""
    with _session(server) as api:
        model = api.call("GET", f"/models/{_model_id(api, model_id)}")
        if not yes and not typer.confirm(f"delete {model['name']} ({model['id']})?"):
            raise _fail("not deleted")
        api.call("DELETE", f"/models/{_model_id(api, model_id)}")
    typer.echo(f"deleted {model['id']}")


# -- pairing tokens -----------------------------------------------------------------


@pairing_app.command("create")
@one_line_errors
def create_pairing_token(
    ttl: Annotated[
        int | None, typer.Option("--ttl", min=1, help="Lifetime in seconds (server default).")
    ] = None,
    forward: Annotated[
        str, typer.Option(help="The local service the agent command forwards to.")
    ] = "127.0.0.1:8000",
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Create a pairing token and print the agent command that uses it (shown once)."""
    body = {"ttl_seconds": ttl} if ttl else {}
    with _session(server) as api:
        created = api.call("POST", "/pairing-tokens", json=body)
        base = api.server
    command = f"visiona agent --server {base} --token {created['token']} --forward {forward}"
    if as_json:
        _echo_json({**created, "agent_command": command})
        return
    typer.echo(f"pairing token {created['token']} (expires {created['expires_at']})")
    typer.echo("on the computer with the dongle, run:")
    typer.echo(f"  {command}")


@pairing_app.command("list")
@one_line_errors
def list_pairing_tokens(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server: ServerOption = None,
) -> None:
    """List your pairing tokens (never their plaintext)."""
    with _session(server) as api:
        items = list(api.pages("/pairing-tokens", {"limit": "200"}))
    if as_json:
        for item in items:
            _echo_json(item)
        return
    table = _table("id", "state", "expires", "device")
    for item in items:
        state = "revoked" if item.get("revoked_at") else "used" if item.get("used_at") else "unused"
        table.add_row(
            str(item["id"])[:16],
            state,
            str(item.get("expires_at") or "")[:19].replace("T", " "),
            str(item.get("device_id") or ""),
        )
    typer.echo(_text(table) + f"{len(items)} pairing token(s)")


@pairing_app.command("revoke")
@one_line_errors
def revoke_pairing_token(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (from list).")],
    server: ServerOption = None,
) -> None:
    """Revoke a pairing token so no agent can use it."""
    with _session(server) as api:
        api.call("DELETE", f"/pairing-tokens/{_path_id(token_id)}")
    typer.echo(f"revoked {token_id}")


# -- enrollment keys --------------------------------------------------------------


@enroll_app.command("create")
@one_line_errors
def create_enrollment_key(  # noqa: PLR0917 - one parameter per command-line option
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. 'warehouse'.")],
    max_uses: Annotated[int, typer.Option("--max-uses", min=1, help="Enrolments it allows.")] = 1,
    expires_in_hours: Annotated[
        int, typer.Option("--expires-in-hours", min=1, help="Hours until it stops working.")
    ] = 24,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", metavar="KEY=VALUE", help="A tag each device gets (repeat)."),
    ] = None,
    name_template: Annotated[
        str | None,
        typer.Option(
            "--name-template", help="Device names: {serial}, {type} and {n} are replaced."
        ),
    ] = None,
    forward: Annotated[
        str, typer.Option(help="The local service the agent command forwards to.")
    ] = "127.0.0.1:8000",
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Create an enrollment key and print the agent command that uses it (shown once)."""
    tags: dict[str, str] = {}
    for word in tag or []:
        key, sep, value = word.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--tag takes KEY=VALUE, got {word!r}")
        tags[key.strip()] = value.strip()
    body: dict[str, Any] = {
        "name": name,
        "max_uses": max_uses,
        "expires_in_hours": expires_in_hours,
        "tags": tags,
    }
    if name_template:
        body["name_template"] = name_template
    with _session(server) as api:
        created = api.call("POST", "/enrollment-keys", json=body)
        base = api.server
    command = f"visiona agent --server {base} --enroll-key {created['key']} --forward {forward}"
    if as_json:
        _echo_json({**created, "agent_command": command})
        return
    typer.echo(
        f"enrollment key {created['key']} ({created['max_uses']} use(s), "
        f"expires {created['expires_at']})"
    )
    typer.echo("on each computer with a dongle, run:")
    typer.echo(f"  {command}")


@enroll_app.command("list")
@one_line_errors
def list_enrollment_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server: ServerOption = None,
) -> None:
    """List your enrollment keys with their uses (never their plaintext)."""
    with _session(server) as api:
        items = list(api.pages("/enrollment-keys", {"limit": "200"}))
    if as_json:
        for item in items:
            _echo_json(item)
        return
    table = _table("id", "name", "uses", "state", "expires", "tags")
    for item in items:
        state = (
            "revoked"
            if item.get("revoked_at")
            else "used up"
            if item["uses"] >= item["max_uses"]
            else "usable"
        )
        table.add_row(
            str(item["id"]),
            str(item["name"]),
            f"{item['uses']}/{item['max_uses']}",
            state,
            str(item.get("expires_at") or "")[:19].replace("T", " "),
            ",".join(f"{k}={v}" for k, v in sorted(item.get("tags", {}).items())),
        )
    typer.echo(_text(table) + f"{len(items)} enrollment key(s)")


@enroll_app.command("revoke")
@one_line_errors
def revoke_enrollment_key(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (from list).")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Revoke an enrollment key: it enrols no more PCs (enrolled devices stay paired)."""
    with _session(server) as api:
        api.call("DELETE", f"/enrollment-keys/{_path_id(key_id)}")
    if as_json:
        _echo_json({"id": key_id, "revoked": True})
        return
    typer.echo(f"revoked {key_id}")


# -- rollouts -----------------------------------------------------------------------

_ROLLOUT_STATES = ("queued", "waiting", "transferring", "succeeded", "failed", "skipped")
_ROLLOUT_OPEN = ("running",)


def render_rollout(rollout: dict[str, Any]) -> Table:
    """A rollout's progress as a table: one row per batch, then the totals."""
    title = (
        f"rollout {rollout['id']}: {rollout['state']}"
        + (f" ({rollout['reason']})" if rollout.get("reason") else "")
        + f", {rollout['devices']} device(s)"
    )
    table = _table("batch", *_ROLLOUT_STATES, "cancelled")
    table.title = title
    for batch in rollout.get("batches", []):
        name = "canary" if batch["batch"] == 0 else str(batch["batch"])
        counts = batch["counts"]
        table.add_row(name, *(str(counts.get(s, 0)) for s in (*_ROLLOUT_STATES, "cancelled")))
    if rollout.get("unbatched"):
        table.add_row("not started", str(rollout["unbatched"]), *[""] * 6)
    counts = rollout["counts"]
    table.add_row("total", *(str(counts.get(s, 0)) for s in (*_ROLLOUT_STATES, "cancelled")))
    return table


def _watch(api: ApiClient, rollout_id: str, interval: float = 1.0) -> dict[str, Any]:
    """Show the rollout live until it is no longer running; its last state."""
    import time  # noqa: PLC0415 - only watching needs it

    from rich.console import Console  # noqa: PLC0415 - see _progress
    from rich.live import Live  # noqa: PLC0415 - idem

    console = Console()
    path = f"/rollouts/{_path_id(rollout_id)}"
    rollout: dict[str, Any] = api.call("GET", path)
    with Live(render_rollout(rollout), console=console, auto_refresh=False) as live:
        while rollout["state"] in _ROLLOUT_OPEN:
            time.sleep(interval)
            rollout = api.call("GET", path)
            live.update(render_rollout(rollout), refresh=True)
    return rollout


def _show_rollout(rollout: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        _echo_json(rollout)
        return
    typer.echo(_text(render_rollout(rollout)), nl=False)


def _percent(value: str) -> int:
    text = value.strip().removesuffix("%").strip()
    if not text.isdigit() or int(text) > 100:
        raise _fail(f"--max-failures takes a percentage from 0 to 100, got {value!r}")
    return int(text)


@rollouts_app.command("create")
@one_line_errors
def create_rollout(  # noqa: PLR0917 - one parameter per command-line option
    model: Annotated[str, typer.Option("--model", "-m", help="The model (id, prefix or name).")],
    select: Annotated[
        str | None,
        typer.Option(
            "--select", "-l", help="A tag selector: the devices it selects, now and later."
        ),
    ] = None,
    device: Annotated[
        list[str] | None,
        typer.Option("--device", "-d", help="A device (id, prefix or name); repeat for several."),
    ] = None,
    canary: Annotated[
        int, typer.Option("--canary", min=0, help="Devices of the canary batch.")
    ] = 0,
    batch: Annotated[
        str, typer.Option("--batch", help="Devices per batch: a count (10) or a share (10%).")
    ] = "100%",
    max_failures: Annotated[
        str, typer.Option("--max-failures", help="Failures allowed before it pauses, e.g. 5%.")
    ] = "0%",
    deadline: Annotated[
        str | None, typer.Option("--deadline", help="ISO 8601 time after which it stops.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Show its progress live.")] = False,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Roll a model out to the devices a selector selects (or the listed ones)."""
    if (select is None) == (not device):
        raise _fail("give --select SELECTOR or --device (one of the two)")
    with _session(server) as api:
        body: dict[str, Any] = {
            "model_id": _resolve(api, "model", "/models", model),
            "canary": canary,
            "batch": batch,
            "max_failure_percent": _percent(max_failures),
        }
        if select is not None:
            body["selector"] = select
        else:
            body["device_ids"] = [_resolve(api, "device", "/devices", d) for d in device or []]
        if deadline:
            body["deadline"] = deadline
        rollout = api.call("POST", "/rollouts", json=body)
        if watch and not as_json:
            rollout = _watch(api, str(rollout["id"]))
    _show_rollout(rollout, as_json=as_json)
    if watch and rollout["state"] != "completed":
        raise typer.Exit(1)


@rollouts_app.command("list")
@one_line_errors
def list_rollouts(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server: ServerOption = None,
) -> None:
    """List your rollouts, newest first."""
    with _session(server) as api:
        items = list(api.pages("/rollouts", {"limit": "200"}))
    if as_json:
        for item in items:
            _echo_json(item)
        return
    table = _table("id", "state", "model", "target", "devices", "succeeded", "failed", "created")
    for item in items:
        table.add_row(
            str(item["id"]),
            str(item["state"]),
            str(item.get("model_id") or f"rollback of {item.get('rollback_of')}"),
            str(item.get("selector") or "devices"),
            str(item["devices"]),
            str(item["counts"].get("succeeded", 0)),
            str(item["counts"].get("failed", 0)),
            str(item["created_at"])[:19].replace("T", " "),
        )
    typer.echo(_text(table) + f"{len(items)} rollout(s)")


@rollouts_app.command("show")
@one_line_errors
def show_rollout(
    rollout_id: Annotated[str, typer.Argument(metavar="ID", help="The rollout's id.")],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Show its progress live.")] = False,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """A rollout's state, batches and devices per state (--watch: live)."""
    with _session(server) as api:
        if watch and not as_json:
            rollout = _watch(api, rollout_id)
        else:
            rollout = api.call("GET", f"/rollouts/{_path_id(rollout_id)}")
    _show_rollout(rollout, as_json=as_json)


@rollouts_app.command("devices")
@one_line_errors
def rollout_devices(
    rollout_id: Annotated[str, typer.Argument(metavar="ID", help="The rollout's id.")],
    state: Annotated[
        str | None, typer.Option("--state", help="Only devices in this state, e.g. failed.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server: ServerOption = None,
) -> None:
    """A rollout's devices with their state, batch and the agent's message."""
    params = {"limit": "200", **({"state": state} if state else {})}
    with _session(server) as api:
        items = list(api.pages(f"/rollouts/{_path_id(rollout_id)}/devices", params))
    if as_json:
        for item in items:
            _echo_json(item)
        return
    table = _table("device", "batch", "state", "message")
    for item in items:
        batch = item.get("batch")
        table.add_row(
            str(item["device_id"]),
            "" if batch is None else "canary" if batch == 0 else str(batch),
            str(item["state"]),
            str(item.get("error") or ""),
        )
    typer.echo(_text(table) + f"{len(items)} device(s)")


def _rollout_action(action: str, rollout_id: str, *, as_json: bool, server: str | None) -> None:
    with _session(server) as api:
        rollout = api.call("POST", f"/rollouts/{_path_id(rollout_id)}/{action}")
    _show_rollout(rollout, as_json=as_json)


@rollouts_app.command("pause")
@one_line_errors
def pause_rollout(
    rollout_id: Annotated[str, typer.Argument(metavar="ID", help="The rollout's id.")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Pause a rollout: no new transfer starts."""
    _rollout_action("pause", rollout_id, as_json=as_json, server=server)


@rollouts_app.command("resume")
@one_line_errors
def resume_rollout(
    rollout_id: Annotated[str, typer.Argument(metavar="ID", help="The rollout's id.")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Resume a paused rollout (also one its failures paused)."""
    _rollout_action("resume", rollout_id, as_json=as_json, server=server)


@rollouts_app.command("cancel")
@one_line_errors
def cancel_rollout(
    rollout_id: Annotated[str, typer.Argument(metavar="ID", help="The rollout's id.")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Cancel a rollout: devices not yet sent are cancelled."""
    _rollout_action("cancel", rollout_id, as_json=as_json, server=server)


@rollouts_app.command("rollback")
@one_line_errors
def rollback_rollout(
    rollout_id: Annotated[str, typer.Argument(metavar="ID", help="The rollout's id.")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Return each device of a finished rollout to its previous model (a new rollout)."""
    _rollout_action("rollback", rollout_id, as_json=as_json, server=server)


# -- audit trail ----------------------------------------------------------------------


@audit_app.command("list")
@one_line_errors
def list_audit_events(
    device_id: Annotated[
        str | None, typer.Option("--device", metavar="ID", help="Only this device's history.")
    ] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action, e.g. device.paired.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many events (newest first).")
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server: ServerOption = None,
) -> None:
    """List your audit events, newest first (yours, your devices' and the server's on them)."""
    query = {"limit": str(min(limit, 200))}
    if action:
        query["action"] = action
    items: list[dict[str, Any]] = []
    with _session(server) as api:
        path = (
            "/audit-events"
            if device_id is None
            else f"/devices/{_device_id(api, device_id)}/audit-events"
        )
        for item in api.pages(path, query):
            items.append(item)
            if len(items) >= limit:
                break
    if as_json:
        for item in items:
            _echo_json(item)
        return
    typer.echo(render_audit_events(items))


def render_audit_events(items: list[dict[str, Any]]) -> str:
    """The events as a plain table (one line per event)."""
    table = _table("time", "action", "actor", "target", "from", "detail")
    for item in items:
        actor = str(item.get("actor_type", ""))
        if item.get("actor_id"):
            actor += f" {str(item['actor_id'])[:8]}"
        target = f"{item.get('target_type', '')} {str(item.get('target_id') or '')[:8]}"
        detail = ", ".join(f"{k}={_plain(v)}" for k, v in (item.get("detail") or {}).items())
        table.add_row(
            str(item.get("occurred_at", ""))[:19].replace("T", " "),
            str(item.get("action", "")),
            actor,
            target.strip(),
            str(item.get("client_addr") or ""),
            detail,
        )
    return _text(table) + f"{len(items)} event(s)"


# -- live events ----------------------------------------------------------------------


@one_line_errors
def events(
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep printing events as they happen (reconnects by itself; Ctrl-C stops).",
        ),
    ] = False,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            metavar="TYPE",
            help="Only this event type: an action (device.renamed) or a family (tunnel.*); "
            "repeatable.",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Without --follow: this many recent events.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server: ServerOption = None,
) -> None:
    """The organisation's events: the recent ones (oldest first), or with --follow the
    live stream (GET /events) from now on, one line each."""
    from visiona.client import events as streaming  # noqa: PLC0415 - httpx only when run

    wanted = list(types or [])
    with _session(server) as api:
        if follow:
            try:
                streaming.follow(
                    api,
                    wanted,
                    as_json=as_json,
                    echo=typer.echo,
                    warn=lambda text: typer.echo(f"warning: {text}", err=True),
                )
            except KeyboardInterrupt:
                raise typer.Exit(0) from None
            return
        recent: list[dict[str, Any]] = []
        for item in api.pages("/audit-events", {"limit": "200"}):
            if streaming.matches(str(item.get("action", "")), wanted):
                recent.append(item)
                if len(recent) >= limit:
                    break
    for item in reversed(recent):
        typer.echo(streaming.render(item, as_json=as_json))


# -- organisations, members, API keys --------------------------------------------------


def _current_org(api: ApiClient) -> str:
    """The organisation the commands act in: the one chosen, else the personal one."""
    chosen = load_org()
    if chosen:
        return chosen
    for org in api.pages("/orgs", {"limit": "200"}):
        if org.get("personal"):
            return str(org["id"])
    raise ClientError("no personal organisation found")


def _pick(items: list[dict[str, Any]], ref: str, kind: str, *fields: str) -> dict[str, Any]:
    """The one item whose id, or one of ``fields``, equals ``ref`` (an id prefix too)."""
    wanted = ref.lower()
    exact = [i for i in items if any(str(i.get(f, "")).lower() == wanted for f in fields)]
    if len(exact) == 1:
        return exact[0]
    prefixed = [i for i in items if str(i["id"]).lower().startswith(wanted)]
    if len(exact) > 1 or len(prefixed) > 1:
        raise ClientError(f"{ref!r} names several {kind}s; give the whole id")
    if not prefixed:
        raise ClientError(f"no {kind} {ref!r}")
    return prefixed[0]


@org_app.command("list")
@one_line_errors
def list_orgs(as_json: JsonOption = False, server: ServerOption = None) -> None:
    """Your organisations with your role; `*` marks the one the commands act in."""
    with _session(server) as api:
        items = list(api.pages("/orgs", {"limit": "200"}))
    chosen = load_org()
    current = chosen or next((str(o["id"]) for o in items if o.get("personal")), None)
    if as_json:
        for item in items:
            _echo_json({**item, "current": str(item["id"]) == current})
        return
    table = _table("", "id", "name", "role", "personal")
    for item in items:
        table.add_row(
            "*" if str(item["id"]) == current else "",
            str(item["id"]),
            str(item["name"]),
            str(item["role"]),
            "yes" if item.get("personal") else "",
        )
    typer.echo(_text(table) + f"{len(items)} organisation(s)")


@org_app.command("switch")
@one_line_errors
def switch_org(
    org: Annotated[
        str, typer.Argument(metavar="ORG", help="The organisation's id, id prefix or name.")
    ],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Act in ORG from now on (saved in your config; sent as X-Visiona-Org)."""
    with _session(server) as api:
        items = list(api.pages("/orgs", {"limit": "200"}))
    found = _pick(items, org, "organisation", "id", "name")
    save_org(str(found["id"]))
    if as_json:
        _echo_json(found)
        return
    typer.echo(f"acting in {found['name']} ({found['id']}) as {found['role']}")


@members_app.command("list")
@one_line_errors
def list_members(as_json: JsonOption = False, server: ServerOption = None) -> None:
    """Members of the organisation you act in, with their role."""
    with _session(server) as api:
        org_id = _current_org(api)
        items = list(api.pages(f"/orgs/{_path_id(org_id)}/members", {"limit": "200"}))
    if as_json:
        for item in items:
            _echo_json(item)
        return
    table = _table("user id", "email", "name", "role")
    for item in items:
        table.add_row(str(item["user_id"]), item["email"], item.get("name") or "", item["role"])
    typer.echo(_text(table) + f"{len(items)} member(s)")


def _member_id(api: ApiClient, org_id: str, ref: str) -> str:
    items = list(api.pages(f"/orgs/{_path_id(org_id)}/members", {"limit": "200"}))
    for item in items:
        item.setdefault("id", item["user_id"])
    return str(_pick(items, ref, "member", "user_id", "email")["user_id"])


@members_app.command("invite")
@one_line_errors
def invite_member(
    email: Annotated[str, typer.Argument(metavar="EMAIL", help="Who to invite.")],
    role: Annotated[str, typer.Option("--role", help="admin, operator or viewer.")] = "viewer",
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Invite EMAIL with a role; prints the one-time invitation token (shown once)."""
    with _session(server) as api:
        org_id = _current_org(api)
        made = api.call(
            "POST", f"/orgs/{_path_id(org_id)}/invitations", json={"email": email, "role": role}
        )
    if as_json:
        _echo_json(made)
        return
    typer.echo(f"invited {email} as {role} (expires {made['expires_at']})")
    typer.echo(f"invitation token (shown once): {made['token']}")


@members_app.command("set-role")
@one_line_errors
def set_member_role(
    user: Annotated[str, typer.Argument(metavar="USER", help="The member's user id or email.")],
    role: Annotated[str, typer.Argument(metavar="ROLE", help="owner, admin, operator, viewer.")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Change a member's role."""
    with _session(server) as api:
        org_id = _current_org(api)
        user_id = _member_id(api, org_id, user)
        changed = api.call(
            "PATCH", f"/orgs/{_path_id(org_id)}/members/{_path_id(user_id)}", json={"role": role}
        )
    if as_json:
        _echo_json(changed)
        return
    typer.echo(f"{changed['email']} is now {changed['role']}")


@members_app.command("remove")
@one_line_errors
def remove_member(
    user: Annotated[str, typer.Argument(metavar="USER", help="The member's user id or email.")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Remove a member from the organisation you act in (your own id or email: leave)."""
    with _session(server) as api:
        org_id = _current_org(api)
        user_id = _member_id(api, org_id, user)
        api.call("DELETE", f"/orgs/{_path_id(org_id)}/members/{_path_id(user_id)}")
    if as_json:
        _echo_json({"removed": user_id, "org_id": org_id})
        return
    typer.echo(f"removed {user}")


@keys_app.command("create")
@one_line_errors
def create_key(
    name: Annotated[str, typer.Argument(metavar="NAME", help="What the key is for.")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help="read, devices:write, models:write, deploy, proxy or admin (repeat).",
        ),
    ],
    expires_in_days: Annotated[
        int, typer.Option("--expires-in-days", min=1, max=365, help="Lifetime, 1 to 365 days.")
    ] = 90,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Create an API key; prints it once (use it as VISIONA_API_KEY)."""
    body = {"name": name, "scopes": scope, "expires_in_days": expires_in_days}
    with _session(server) as api:
        made = api.call("POST", "/api-keys", json=body)
    if as_json:
        _echo_json(made)
        return
    typer.echo(f"API key {made['id']} {made['name']} ({' '.join(made['scopes'])}), "
               f"expires {made['expires_at']}")  # fmt: skip
    typer.echo(f"key (shown once): {made['key']}")


@keys_app.command("list")
@one_line_errors
def list_keys(as_json: JsonOption = False, server: ServerOption = None) -> None:
    """API keys of the organisation you act in (never the keys themselves)."""
    with _session(server) as api:
        items = list(api.pages("/api-keys", {"limit": "200"}))
    if as_json:
        for item in items:
            _echo_json(item)
        return
    table = _table("id", "name", "prefix", "scopes", "state", "expires", "last used")
    for item in items:
        table.add_row(
            str(item["id"]),
            item["name"],
            item["prefix"],
            " ".join(item["scopes"]),
            item["state"],
            str(item["expires_at"])[:19].replace("T", " "),
            str(item.get("last_used_at") or "")[:19].replace("T", " "),
        )
    typer.echo(_text(table) + f"{len(items)} API key(s)")


@keys_app.command("revoke")
@one_line_errors
def revoke_key(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (from list).")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Revoke an API key: every server refuses it within a second."""
    with _session(server) as api:
        api.call("DELETE", f"/api-keys/{_path_id(key_id)}")
    if as_json:
        _echo_json({"revoked": key_id})
        return
    typer.echo(f"revoked {key_id}")


# -- forward ------------------------------------------------------------------------


@one_line_errors
def forward(
    device: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE", help="The device's id, a unique prefix of it, or its unique name."
        ),
    ],
    spec: Annotated[
        str,
        typer.Argument(
            metavar="[LOCAL_ADDR:]LOCAL_PORT:REMOTE_PORT | PORT",
            help="Where to listen and which port of the device's PC to reach (with "
            "--stdio: only the port).",
        ),
    ],
    stdio: Annotated[
        bool,
        typer.Option(
            "--stdio",
            help="Carry standard input and output instead of listening (for ssh's ProxyCommand).",
        ),
    ] = False,
    server: ServerOption = None,
) -> None:
    """Reach a TCP port of a device's PC through its tunnel (the agent must allow the port:
    `visiona agent --allow-port N`).

    `visiona forward DEVICE 2222:22` listens on 127.0.0.1:2222 and carries each
    connection to port 22 of the device's PC; Ctrl-C stops it.
    `ssh -o ProxyCommand='visiona forward --stdio %h 22' user@DEVICE` reaches its sshd.
    """
    from visiona.client import forward as forwarding  # noqa: PLC0415 - websockets only when run

    if stdio:
        address, local, remote = "", 0, forwarding.parse_port(spec)
    else:
        address, local, remote = forwarding.parse_spec(spec)
    base, token, org_id = _auth(server)
    device_id = device.lower()
    if not forwarding.is_uuid(device) or not stdio:
        # --stdio with a whole id asks nothing first (ssh waits on it); a listener checks
        # the device and the port before it listens
        with _session(base) as api:
            if not forwarding.is_uuid(device):
                items = list(api.pages("/devices", {"limit": "200"}))
                device_id = forwarding.resolve_device(items, device)
            if not stdio:
                forwarding.check_port(api.call("GET", f"/devices/{_path_id(device_id)}"), remote)
    target = forwarding.Target(base, token, device_id, remote, org_id)
    code = forwarding.run(target, stdio=stdio, address=address, port=local)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the client commands to the root ``visiona`` command."""
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("forward")(forward)
    app.command("events")(events)
    app.add_typer(models_app, name="models")
    app.add_typer(devices_app, name="devices")
    app.add_typer(deployments_app, name="deployments")
    app.add_typer(pairing_app, name="pairing-tokens")
    app.add_typer(enroll_app, name="enroll-keys")
    app.add_typer(rollouts_app, name="rollouts")
    app.add_typer(audit_app, name="audit")
    app.add_typer(org_app, name="org")
    app.add_typer(members_app, name="members")
    app.add_typer(keys_app, name="keys")
    from visiona.client.webhooks import webhooks_app  # noqa: PLC0415 - it imports this module

    app.add_typer(webhooks_app, name="webhooks")
