"""Use cases of the audit trail: record an event, list a trail, prune expired events.

:func:`record` writes on the caller's connection, inside the caller's transaction:
the event commits with the change it records, or rolls back with it. The request id
and the client address come from the request context (set by
:class:`visiona.kit.http.Edge`) unless given. ``detail`` is small
and never carries a token, password or hash: :func:`record` refuses keys that name
one and values that look like one of our tokens.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import repository
from visiona.audit.catalogue import ACTIONS
from visiona.audit.repository import AuditEvent, EventFilter
from visiona.kit.clock import utcnow
from visiona.kit.logs import client_addr_var, request_id_var
from visiona.kit.pagination import Page, PageRequest
from visiona.kit.tokens import (
    API_KEY_PREFIX,
    DEVICE_SESSION_PREFIX,
    ENROLLMENT_PREFIX,
    INVITATION_PREFIX,
    PAIRING_PREFIX,
    USER_SESSION_PREFIX,
)

_LOGGER = logging.getLogger(__name__)

#: The largest ``detail`` accepted, as compact JSON.
MAX_DETAIL_BYTES = 2048
#: How many rows one prune statement deletes (each batch its own short transaction).
PRUNE_BATCH = 1000
_SECRET_WORDS = ("password", "secret", "hash", "plaintext")
_TOKEN_PREFIXES = tuple(
    f"{p}_"
    for p in (
        USER_SESSION_PREFIX,
        PAIRING_PREFIX,
        DEVICE_SESSION_PREFIX,
        INVITATION_PREFIX,
        ENROLLMENT_PREFIX,
        API_KEY_PREFIX,
    )
)
_MAX_TEXT = 320  # an email as typed, a name, a reason: longer values are cut


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: a user, a device (its agent) or the system itself."""

    type: str
    id: uuid.UUID | None = None

    @classmethod
    def user(cls, user_id: uuid.UUID) -> Actor:
        """A signed-in user."""
        return cls("user", user_id)

    @classmethod
    def device(cls, device_id: uuid.UUID) -> Actor:
        """A device's agent (authenticated by its session token or pairing token)."""
        return cls("device", device_id)

    @classmethod
    def acting(cls, user_id: uuid.UUID, api_key_id: uuid.UUID | None) -> Actor:
        """The API key ``api_key_id`` when the caller authenticated with one, else the
        user ``user_id`` (a key acts for the user who created it, but is named itself)."""
        return cls("api_key", api_key_id) if api_key_id is not None else cls.user(user_id)


#: The server itself (timers, revocation, shutdown).
SYSTEM = Actor("system")


_last_event_time: list[datetime] = []


def _event_time() -> datetime:
    """Now, but never at or before the previous event of this process (1 µs later then)."""
    now = utcnow()
    if _last_event_time and now <= _last_event_time[0]:
        now = _last_event_time[0] + timedelta(microseconds=1)
    _last_event_time[:] = [now]
    return now


def _checked_detail(action: str, detail: Mapping[str, Any] | None) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in (detail or {}).items():
        lowered = key.lower()
        if lowered == "token" or any(word in lowered for word in _SECRET_WORDS):
            raise ValueError(f"audit detail key {key!r} of {action} names a secret")
        clean[key] = _checked_value(action, key, value)
    encoded = json.dumps(clean, separators=(",", ":"), default=str)
    if len(encoded.encode()) > MAX_DETAIL_BYTES:
        raise ValueError(f"audit detail of {action} is larger than {MAX_DETAIL_BYTES} bytes")
    loaded: dict[str, Any] = json.loads(encoded)  # plain JSON values only (UUIDs → text)
    return loaded


def _checked_value(action: str, key: str, value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_checked_value(action, key, item) for item in value]
    if isinstance(value, str):
        if value.startswith(_TOKEN_PREFIXES):
            raise ValueError(f"audit detail {key!r} of {action} looks like a token")
        return value[:_MAX_TEXT]
    return value


async def record(
    conn: AsyncConnection,
    action: str,
    *,
    actor: Actor,
    org_id: uuid.UUID | None,
    target_id: str | uuid.UUID | None,
    device_id: uuid.UUID | None = None,
    owner_id: uuid.UUID | None = None,
    detail: Mapping[str, Any] | None = None,
    client_addr: str | None = None,
    request_id: str | None = None,
) -> uuid.UUID:
    """Append an event on ``conn`` (the caller's transaction); its id.

    ``org_id`` is the organisation whose trail it is (None: nobody's); ``owner_id`` the
    user it concerns (default: the acting user); ``device_id`` the device it concerns
    (the device's page lists it). The target type comes from the catalogue. An
    unknown action or a detail that names a secret is a programming error
    (``ValueError``), never written. ``occurred_at`` is strictly increasing within
    this process, so the events of one unit of work list in the order they happened.
    """
    values = event_values(
        action,
        actor=actor,
        org_id=org_id,
        owner_id=owner_id,
        target_id=target_id,
        device_id=device_id,
        detail=detail,
        client_addr=client_addr,
        request_id=request_id,
    )
    await repository.insert_event(conn, values)
    event_id: uuid.UUID = values["id"]
    return event_id


def event_values(
    action: str,
    *,
    actor: Actor,
    org_id: uuid.UUID | None,
    target_id: str | uuid.UUID | None,
    device_id: uuid.UUID | None = None,
    owner_id: uuid.UUID | None = None,
    detail: Mapping[str, Any] | None = None,
    client_addr: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The row of an event that happens now, checked as :func:`record` checks it, for
    :func:`record_prepared` to write later (a batch: ``occurred_at`` is now, not then)."""
    known = ACTIONS.get(action)
    if known is None:
        raise ValueError(f"unknown audit action {action!r}")
    event_id = uuid.uuid4()
    return {
        "id": event_id,
        "occurred_at": _event_time(),
        "owner_id": owner_id if owner_id is not None or actor.type != "user" else actor.id,
        "org_id": org_id,
        "actor_type": actor.type,
        "actor_id": actor.id,
        "action": action,
        "target_type": known.target_type,
        "target_id": None if target_id is None else str(target_id),
        "device_id": device_id,
        "client_addr": client_addr if client_addr is not None else client_addr_var.get(),
        "request_id": request_id if request_id is not None else request_id_var.get(),
        "detail": _checked_detail(action, detail),
    }


async def record_prepared(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Append events built by :func:`event_values`, in one statement (executemany)."""
    if rows:
        await repository.insert_events(conn, rows)


async def list_events(
    conn: AsyncConnection, spec: EventFilter, page: PageRequest
) -> Page[AuditEvent]:
    """One page of ``spec.org_id``'s trail (optionally one device's), newest first."""
    return await repository.list_events(conn, spec, page)


def retention_cutoff(retention_days: int, now: datetime | None = None) -> datetime:
    """The instant before which events have expired."""
    return (now or utcnow()) - timedelta(days=retention_days)


async def prune_batch(conn: AsyncConnection, cutoff: datetime, batch: int = PRUNE_BATCH) -> int:
    """Delete at most ``batch`` events older than ``cutoff``; how many (0: none left)."""
    return await repository.delete_before(conn, cutoff, batch)
