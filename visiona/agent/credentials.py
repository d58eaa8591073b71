"""The agent's session: pairing over HTTP and the 0600 session file."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from visiona.wire import API_PREFIX, PAIR_PATH

_LOGGER = logging.getLogger(__name__)


class AgentAuthError(Exception):
    """The server refused the agent's credentials (401/403): retrying cannot help."""

    def __init__(self, status: int, what: str) -> None:
        """Remember the HTTP status and what was refused."""
        super().__init__(f"the server refused the {what} (HTTP {status})")
        self.status = status


@dataclass(frozen=True)
class Credentials:
    """What pairing gives the agent: its device and session token for one server."""

    server: str
    device_id: str
    session_token: str
    expires_at: str


def load(path: Path, server: str) -> Credentials | None:
    """The stored session for ``server``, or None (no file, another server, unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        creds = Credentials(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        _LOGGER.warning("agent: ignoring unreadable session file %s (%s)", path, type(err).__name__)
        return None
    if creds.server.rstrip("/") != server.rstrip("/"):
        _LOGGER.info("agent: the session file is for another server; pairing again")
        return None
    return creds


def store(path: Path, creds: Credentials) -> None:
    """Write ``creds`` to ``path`` readable by the owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(asdict(creds), out)
    os.replace(tmp, path)
    os.chmod(path, 0o600)


async def pair(
    http: httpx.AsyncClient,
    server: str,
    *,
    pairing_token: str,
    name: str,
    serial_number: str,
    device_type: str,
) -> Credentials:
    """Exchange ``pairing_token`` for a device and a session token."""
    response = await http.post(
        f"{server.rstrip('/')}{API_PREFIX}{PAIR_PATH}",
        json={
            "pairing_token": pairing_token,
            "serial_number": serial_number,
            "device_type": device_type,
            "name": name,
        },
    )
    if response.status_code in {401, 403}:
        raise AgentAuthError(response.status_code, "pairing token")
    response.raise_for_status()
    body = response.json()
    return Credentials(
        server=server.rstrip("/"),
        device_id=str(body["device_id"]),
        session_token=str(body["session_token"]),
        expires_at=str(body["expires_at"]),
    )
