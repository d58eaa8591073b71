"""Where the client keeps its session: a 0600 JSON file in the user's config directory.

The directory is ``$XDG_CONFIG_HOME/visiona`` when that variable is set, otherwise
``typer.get_app_dir("visiona")`` (``~/.config/visiona`` on Linux). The file holds
the server URL and the session token; it is written atomically with mode 0600.
``cli.json`` beside it holds the organisation chosen with ``visiona org switch`` (sent
as ``X-Visiona-Org``); ``login`` and ``logout`` forget it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

CREDENTIALS_FILE = "credentials.json"
CLI_CONFIG_FILE = "cli.json"


@dataclass(frozen=True)
class Credentials:
    """A signed-in session on one server."""

    server: str
    token: str
    email: str


def config_dir() -> Path:
    """The client's configuration directory (not created here)."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "visiona"
    return Path(typer.get_app_dir("visiona"))


def credentials_path() -> Path:
    """The credentials file."""
    return config_dir() / CREDENTIALS_FILE


def save_credentials(credentials: Credentials) -> Path:
    """Write the credentials atomically, readable by the user only (0600)."""
    path = credentials_path()
    _write_private(path, asdict(credentials))
    return path


def _write_private(path: Path, value: dict[str, str]) -> None:
    """Write ``value`` as JSON to ``path`` atomically, readable by the user only (0600)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)  # whatever the umask said
            json.dump(value, handle)
        temp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def load_credentials() -> Credentials | None:
    """The saved credentials, or None when there are none (or they are unreadable)."""
    try:
        raw = json.loads(credentials_path().read_text(encoding="utf-8"))
        return Credentials(
            server=str(raw["server"]), token=str(raw["token"]), email=str(raw["email"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_credentials() -> None:
    """Delete the saved credentials, if any."""
    with contextlib.suppress(FileNotFoundError):
        credentials_path().unlink()


def save_org(org_id: str) -> Path:
    """Remember the organisation the commands act in (``visiona org switch``)."""
    path = config_dir() / CLI_CONFIG_FILE
    _write_private(path, {"org_id": org_id})
    return path


def load_org() -> str | None:
    """The organisation chosen with ``visiona org switch`` (None: the personal one)."""
    try:
        raw = json.loads((config_dir() / CLI_CONFIG_FILE).read_text(encoding="utf-8"))
        return str(raw["org_id"]) if raw.get("org_id") else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def forget_org() -> None:
    """Forget the chosen organisation (back to the personal one)."""
    with contextlib.suppress(FileNotFoundError):
        (config_dir() / CLI_CONFIG_FILE).unlink()
