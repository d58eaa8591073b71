"""Client commands: ``visiona login``, ``visiona models ...``, ``visiona devices list``.

They talk to a running server over HTTP with the session token saved by ``login``
(:mod:`visiona.client.config`). Every failure prints one line, ``error: ...``, on
stderr and exits with status 1.
"""

from __future__ import annotations

import functools
import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from visiona.client.config import Credentials, load_credentials, save_credentials
from visiona.client.http import ApiClient, ClientError
from visiona.models.schemas import TargetChip

_LOGGER = logging.getLogger(__name__)
DEFAULT_SERVER = "http://127.0.0.1:8080"

models_app = typer.Typer(help="Upload, list and download your AI models.", no_args_is_help=True)
devices_app = typer.Typer(help="Your paired devices.", no_args_is_help=True)

P = ParamSpec("P")
R = TypeVar("R")

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


@contextmanager
def _session(server: str | None) -> Iterator[ApiClient]:
    credentials = load_credentials()
    if credentials is None:
        raise _fail("not logged in; run `visiona login` first")
    with ApiClient(server or credentials.server, credentials.token) as api:
        yield api


def _progress() -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,  # the summary line after it says what happened
        disable=not console.is_terminal,  # no bar in pipes and logs: stderr stays one line
    )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


# -- login ------------------------------------------------------------------------


@one_line_errors
def login(
    email: Annotated[str, typer.Option(prompt=True, help="Your account's email.")],
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, help="Your password (prompted).")
    ],
    server: Annotated[
        str, typer.Option("--server", envvar="VISIONA_SERVER", help="Server URL.")
    ] = DEFAULT_SERVER,
) -> None:
    """Sign in and save the session token (0600 file in your config directory)."""
    with ApiClient(server) as api:
        token = api.login(email, password)
    path = save_credentials(Credentials(server=server.rstrip("/"), token=token, email=email))
    typer.echo(f"logged in to {server} as {email} (session saved in {path})")


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
    table = Table("id", "name", "chip", "size", "labels", "created")
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


def _text(table: Table) -> str:
    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(table)
    out = console.file
    assert isinstance(out, io.StringIO)  # noqa: S101 - set two lines above
    return out.getvalue()


@models_app.command("download")
@one_line_errors
def download(
    model_id: Annotated[str, typer.Argument(metavar="ID", help="The model's id.")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", dir_okay=False, help="Defaults to <name>.nef here."),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Download a model's file, with a progress bar, and check its sha256."""
    with _session(server) as api:
        dest = output or _default_destination(api.call("GET", f"/models/{model_id}"))
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


@devices_app.command("list")
@one_line_errors
def list_devices(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server: ServerOption = None,
) -> None:
    """List your devices with their tunnel and USB status."""
    with _session(server) as api:
        items = list(api.pages("/devices", {"limit": "200"}))
    if as_json:
        for item in items:
            typer.echo(json.dumps(item))
        return
    typer.echo(render_devices(items))


def render_devices(items: list[dict[str, Any]]) -> str:
    """The devices as a plain table (one line per device)."""
    table = Table("id", "name", "type", "serial", "remote", "usb")
    for item in items:
        table.add_row(
            str(item.get("id", "")),
            str(item.get("name", "")),
            str(item.get("device_type") or ""),
            str(item.get("serial_number") or ""),
            str(item.get("remote_status", "")),
            str(item.get("status", "")),
        )
    return _text(table) + f"{len(items)} device(s)"
