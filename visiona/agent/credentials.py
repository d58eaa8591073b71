"""The agent's session: pairing and renewal over HTTP, the 0600 session file, run state."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from visiona.wire import API_PREFIX, ENROLL_PATH, ENROLLMENT_KEY_PREFIX, PAIR_PATH, RENEW_PATH

_LOGGER = logging.getLogger(__name__)


class AgentAuthError(Exception):
    """The server refused the agent's credentials (401/403): retrying cannot help."""

    def __init__(self, status: int, what: str) -> None:
        """Remember the HTTP status and what was refused."""
        super().__init__(f"the server refused the {what} (HTTP {status})")
        self.status = status


class ServerUnavailableError(Exception):
    """The server could not be reached or answered 5xx: worth retrying later."""


@dataclass(frozen=True)
class Credentials:
    """What pairing gives the agent: its device and session token for one server."""

    server: str
    device_id: str
    session_token: str
    expires_at: str
    #: sha256 of the pairing token this session came from ("" when unknown)
    paired_with: str = ""
    #: when the agent received this token (its clock; "" when unknown)
    issued_at: str = ""

    def expires(self) -> datetime | None:
        """``expires_at`` as an aware datetime (None when unreadable)."""
        return _instant(self.expires_at)

    def issued(self) -> datetime | None:
        """``issued_at`` as an aware datetime (None when unknown)."""
        return _instant(self.issued_at)


def _instant(text: str) -> datetime | None:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def token_digest(token: str) -> str:
    """The hex sha256 of a token (what the session file keeps of a pairing token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_any(path: Path) -> Credentials | None:
    """The stored session whatever its server, or None (no file, unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(Credentials)}
        return Credentials(**{k: v for k, v in data.items() if k in known})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as err:
        _LOGGER.warning("agent: ignoring unreadable session file %s (%s)", path, type(err).__name__)
        return None


def load(path: Path, server: str) -> Credentials | None:
    """The stored session for ``server``, or None (no file, another server, unreadable)."""
    creds = load_any(path)
    if creds is None:
        return None
    if creds.server.rstrip("/") != server.rstrip("/"):
        _LOGGER.info("agent: the session file is for another server; pairing again")
        return None
    return creds


def _write_private(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to ``path`` atomically, readable by the owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask said
            json.dump(payload, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def store(path: Path, creds: Credentials) -> None:
    """Write ``creds`` to ``path`` readable by the owner only (0600), atomically."""
    _write_private(path, asdict(creds))


def state_path(session_file: Path) -> Path:
    """Where the last run's tunnel state is kept: next to the session file."""
    return session_file.with_name(f"{session_file.stem}.state.json")


def store_state(
    session_file: Path,
    tunnel: str,
    last_close: str | None = None,
    *,
    policy: dict[str, Any] | None = None,
) -> None:
    """Record the tunnel state (``up``, ``down``, ``stopped``, ``refused``) for `agent status`.

    ``policy`` (the running agent's rules, :meth:`Policy.describe`) is recorded when
    given, else the one recorded before is kept.
    """
    payload: dict[str, Any] = {
        "tunnel": tunnel,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if last_close:
        payload["last_close"] = last_close
    if policy is None:
        policy = load_state(session_file).get("policy")
    if policy is not None:
        payload["policy"] = policy
    try:
        _write_private(state_path(session_file), payload)
    except OSError as err:
        _LOGGER.debug("agent: cannot record the tunnel state: %s", err)


def load_state(session_file: Path) -> dict[str, Any]:
    """The last recorded tunnel state ({} when none)."""
    try:
        data = json.loads(state_path(session_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_path(session_file: Path) -> Path:
    """Where the model of the last successful deployment is kept: next to the session file
    (``<stem>.model.json``), so it survives restarts and goes with the session."""
    return session_file.with_name(f"{session_file.stem}.model.json")


def store_current_model(session_file: Path, model_id: str, sha256: str) -> None:
    """Record ``model_id`` (``sha256``) as the model this PC runs now (0600, atomic)."""
    payload = {
        "id": model_id,
        "sha256": sha256,
        "deployed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_private(model_path(session_file), payload)


def load_current_model(session_file: Path) -> dict[str, str] | None:
    """``{"id", "sha256"}`` of the last successful deployment, or None (none, unreadable)."""
    try:
        data = json.loads(model_path(session_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        _LOGGER.warning("agent: ignoring the unreadable model record (%s)", type(err).__name__)
        return None
    if not isinstance(data, dict):
        return None
    model_id, sha256 = data.get("id"), data.get("sha256")
    if not isinstance(model_id, str) or not isinstance(sha256, str):
        return None
    return {"id": model_id, "sha256": sha256}


async def _post(http: httpx.AsyncClient, url: str, **kwargs: Any) -> httpx.Response:
    try:
        response = await http.post(url, **kwargs)
    except httpx.HTTPError as err:
        reason = str(err) or type(err).__name__
        raise ServerUnavailableError(f"cannot reach {url} ({reason})") from None
    if response.status_code >= 500:
        raise ServerUnavailableError(f"{url} answered HTTP {response.status_code}")
    return response


async def pair(
    http: httpx.AsyncClient,
    server: str,
    *,
    pairing_token: str,
    name: str,
    serial_number: str,
    device_type: str,
) -> Credentials:
    """Exchange ``pairing_token`` for a device and a session token; an enrollment key
    (``vek_…``) is sent to the enrolment route instead (the same answer).

    Raises :class:`AgentAuthError` on 401/403 and :class:`ServerUnavailableError`
    when the server is unreachable or answers 5xx (or 429). Neither the token nor the
    key is ever logged.
    """
    enrolling = pairing_token.startswith(ENROLLMENT_KEY_PREFIX)
    body = {"serial_number": serial_number, "device_type": device_type, "name": name}
    if enrolling:
        body["enrollment_key"] = pairing_token
    else:
        body["pairing_token"] = pairing_token
    path = ENROLL_PATH if enrolling else PAIR_PATH
    response = await _post(http, f"{server.rstrip('/')}{API_PREFIX}{path}", json=body)
    what = "enrollment key" if enrolling else "pairing token"
    if response.status_code in {401, 403}:
        raise AgentAuthError(response.status_code, what)
    if response.status_code == 429:
        raise ServerUnavailableError(
            f"{'enrolment' if enrolling else 'pairing'} is rate limited (HTTP 429)"
        )
    if response.is_error:
        raise AgentAuthError(response.status_code, f"pairing request ({_code(response)})")
    body = response.json()
    return Credentials(
        server=server.rstrip("/"),
        device_id=str(body["device_id"]),
        session_token=str(body["session_token"]),
        expires_at=str(body["expires_at"]),
        paired_with=token_digest(pairing_token),
        issued_at=_now(),
    )


async def renew(http: httpx.AsyncClient, creds: Credentials) -> Credentials:
    """Trade the current session token for a new one of the same device."""
    response = await _post(
        http,
        f"{creds.server}{API_PREFIX}{RENEW_PATH}",
        headers={"Authorization": f"Bearer {creds.session_token}"},
    )
    if response.status_code in {401, 403}:
        raise AgentAuthError(response.status_code, "session token")
    if response.is_error:
        raise ServerUnavailableError(f"renewal answered HTTP {response.status_code}")
    body = response.json()
    return Credentials(
        server=creds.server,
        device_id=str(body["device_id"]),
        session_token=str(body["session_token"]),
        expires_at=str(body["expires_at"]),
        paired_with=creds.paired_with,
        issued_at=_now(),
    )


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
