"""Use cases for devices, pairing tokens, session tokens and the agent.

Every function takes the connection of a unit of work opened at the edge and never
commits. :func:`authenticate_device` is the one entry point the tunnel uses to check
an agent's session token.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.devices import repository
from visiona.kit.clock import utcnow
from visiona.kit.errors import (
    ConflictError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
    ValidationFailedError,
)
from visiona.kit.pagination import Page, PageRequest
from visiona.kit.ratelimit import RateLimiter
from visiona.kit.settings import Settings
from visiona.kit.tokens import (
    DEVICE_SESSION_PREFIX,
    PAIRING_PREFIX,
    has_prefix,
    hash_token,
    new_token,
)

_LOGGER = logging.getLogger(__name__)
_TOKEN_ID = re.compile(r"^[0-9a-f]{64}$")
# One message for every failing agent token: no oracle for used / expired / unknown.
AGENT_TOKEN_REJECTED = "The token is not valid."  # noqa: S105 - a message, not a secret


def _agent_unauthorized() -> UnauthorizedError:
    return UnauthorizedError(AGENT_TOKEN_REJECTED, headers={"WWW-Authenticate": "Bearer"})


# -- devices ------------------------------------------------------------------


async def list_devices(
    conn: AsyncConnection,
    owner_user_id: uuid.UUID,
    *,
    remote_status: str | None = None,
    status: str | None = None,
    page: PageRequest,
    stale_before: datetime | None = None,
) -> Page[dict[str, Any]]:
    """The owner's live devices in creation order, one page at a time.

    ``stale_before`` (see :func:`stale_before`) applies the liveness rule to
    ``remote_status``: a device not seen since then reads ``offline``.
    """
    return await repository.list_devices(
        conn,
        owner_user_id,
        remote_status=remote_status,
        status=status,
        page=page,
        stale_before=stale_before,
    )


def stale_before(settings: Settings, now: datetime | None = None) -> datetime:
    """Devices not seen since this instant read ``offline``: three tunnel status intervals ago.

    The tunnel refreshes ``last_seen_at`` of its connected devices every interval; a
    node that crashed stops doing so, and its devices fall back to offline.
    """
    return (now or utcnow()) - timedelta(seconds=3 * settings.tunnel_status_interval)


async def get_device(
    conn: AsyncConnection,
    owner_user_id: uuid.UUID,
    device_id: uuid.UUID,
    *,
    stale_before: datetime | None = None,
) -> dict[str, Any]:
    """The owner's live device; another user's or a deleted one is a 404."""
    device = await repository.get_device(conn, owner_user_id, device_id, stale_before=stale_before)
    if device is None:
        raise NotFoundError("Device not found.")
    return device


async def create_device(
    conn: AsyncConnection,
    owner_user_id: uuid.UUID,
    *,
    name: str,
    serial_number: str,
    device_type: str | None,
) -> dict[str, Any]:
    """Register a device; a live device of the owner with the same serial is a 409."""
    device = await repository.insert_device_if_absent(
        conn,
        device_id=uuid.uuid4(),
        owner_user_id=owner_user_id,
        name=name,
        device_type=device_type,
        serial_number=serial_number,
        now=utcnow(),
    )
    if device is None:
        raise ConflictError("A device with this serial number is already registered.")
    return device


async def rename_device(
    conn: AsyncConnection,
    owner_user_id: uuid.UUID,
    device_id: uuid.UUID,
    name: str,
    *,
    stale_before: datetime | None = None,
) -> dict[str, Any]:
    """Rename the owner's device (404 when not theirs); the answer reads like a GET."""
    device = await repository.rename_device(
        conn, owner_user_id, device_id, name=name, now=utcnow(), stale_before=stale_before
    )
    if device is None:
        raise NotFoundError("Device not found.")
    return device


@dataclass(frozen=True)
class Unpaired:
    """What an unpair revoked."""

    device_id: uuid.UUID
    pairing_tokens: int
    session_tokens: int


async def unpair_device(
    conn: AsyncConnection, owner_user_id: uuid.UUID, device_id: uuid.UUID
) -> Unpaired:
    """Soft-delete the device and revoke every pairing and session token bound to it.

    All steps run on ``conn``, so they commit or roll back together; the caller
    closes the live tunnel (``Runtime.device_revoked``) only after the commit.
    """
    now = utcnow()
    if not await repository.soft_delete_device(conn, owner_user_id, device_id, now):
        raise NotFoundError("Device not found.")
    pairing = await repository.revoke_pairing_tokens_of_device(conn, device_id, now)
    sessions = await repository.revoke_session_tokens_of_device(conn, device_id, now)
    return Unpaired(device_id=device_id, pairing_tokens=pairing, session_tokens=sessions)


# -- pairing tokens -------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    """A token's public id, its plaintext (shown once) and its end of life."""

    id: str
    token: str
    expires_at: datetime


def pairing_ttl(settings: Settings, ttl_seconds: int | None) -> int:
    """The lifetime to give a pairing token: the default, or the asked one within the max."""
    if ttl_seconds is None:
        return min(settings.pairing_token_ttl, settings.pairing_token_max_ttl)
    if ttl_seconds > settings.pairing_token_max_ttl:
        raise ValidationFailedError(
            [
                {
                    "loc": ["body", "ttl_seconds"],
                    "message": f"must be at most {settings.pairing_token_max_ttl}",
                    "type": "less_than_equal",
                }
            ]
        )
    return ttl_seconds


async def create_pairing_token(conn: AsyncConnection, user_id: uuid.UUID, ttl: int) -> IssuedToken:
    """Issue a pairing token for ``user_id`` valid for ``ttl`` seconds."""
    token = new_token(PAIRING_PREFIX)
    now = utcnow()
    expires_at = now + timedelta(seconds=ttl)
    row = await repository.insert_pairing_token(
        conn, token_hash=hash_token(token), user_id=user_id, now=now, expires_at=expires_at
    )
    return IssuedToken(id=row["token_hash"], token=token, expires_at=expires_at)


async def list_pairing_tokens(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    page: PageRequest,
) -> Page[dict[str, Any]]:
    """The user's pairing tokens (used and revoked ones too), in creation order."""
    return await repository.list_pairing_tokens(conn, user_id, page)


async def revoke_pairing_token(conn: AsyncConnection, user_id: uuid.UUID, token_id: str) -> None:
    """Revoke the user's pairing token; a malformed, unknown or foreign id is a 404."""
    if not _TOKEN_ID.match(token_id) or not await repository.revoke_pairing_token(
        conn, user_id, token_id, utcnow()
    ):
        raise NotFoundError("Pairing token not found.")


# -- the agent ------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """The outcome of a pair exchange."""

    device_id: uuid.UUID
    owner_user_id: uuid.UUID
    session_token: str
    expires_at: datetime
    new_device: bool


async def check_pair_rate(limiter: RateLimiter, settings: Settings, address: str) -> None:
    """Count a pair attempt per client address; over the limit → 429."""
    hit = await limiter.hit(
        f"pair:addr:{address}", settings.pair_rate_limit, settings.pair_rate_window
    )
    if not hit.allowed:
        raise RateLimitedError(hit.retry_after, "Too many pairing attempts; try again later.")


async def pair(
    conn: AsyncConnection,
    settings: Settings,
    *,
    pairing_token: str,
    serial_number: str,
    device_type: str,
    name: str,
) -> Paired:
    """Exchange a pairing token for a device and a session token, all on ``conn``.

    1. consume the token with one conditional UPDATE (the winner of a race takes
       it; every other caller, and every bad token, gets the same 401);
    2. re-use the owner's live device with this serial, or create it;
    3. bind the token to the device, set ``paired_at``, issue a session token whose
       ``parent_token_hash`` is the pairing token's hash.
    """
    if not has_prefix(pairing_token, PAIRING_PREFIX):
        raise _agent_unauthorized()
    now = utcnow()
    parent = hash_token(pairing_token)
    owner = await repository.consume_pairing_token(conn, parent, now)
    if owner is None:
        raise _agent_unauthorized()
    device = await repository.insert_device_if_absent(
        conn,
        device_id=uuid.uuid4(),
        owner_user_id=owner,
        name=name,
        device_type=device_type,
        serial_number=serial_number,
        now=now,
        paired_at=now,
    )
    new_device = device is not None
    if device is None:
        device = await repository.get_live_device_by_serial(conn, owner, serial_number)
        # unpaired between the insert and here: roll everything back, the agent retries
        if device is None or not await repository.mark_paired(conn, device["id"], now):
            raise ConflictError("The device was unpaired while pairing; try again.")
    device_id: uuid.UUID = device["id"]
    await repository.bind_pairing_token(conn, parent, device_id)
    session = new_token(DEVICE_SESSION_PREFIX)
    expires_at = now + timedelta(seconds=settings.session_token_ttl)
    await repository.insert_session_token(
        conn,
        token_hash=hash_token(session),
        user_id=owner,
        device_id=device_id,
        parent_token_hash=parent,
        now=now,
        expires_at=expires_at,
    )
    return Paired(
        device_id=device_id,
        owner_user_id=owner,
        session_token=session,
        expires_at=expires_at,
        new_device=new_device,
    )


@dataclass(frozen=True)
class DeviceIdentity:
    """An agent authenticated by its session token."""

    device_id: uuid.UUID
    owner_user_id: uuid.UUID
    token_hash: str


async def authenticate_device(
    conn: AsyncConnection, token: str | None, *, now: datetime | None = None
) -> DeviceIdentity:
    """The device a session token speaks for; any failure is the same 401.

    Valid means: a ``vst_`` token whose hash is stored, unrevoked, unexpired, and
    whose device is not deleted. This is what the tunnel calls before the
    WebSocket upgrade.
    """
    if not token or not has_prefix(token, DEVICE_SESSION_PREFIX):
        raise _agent_unauthorized()
    row = await repository.find_valid_session(conn, hash_token(token), now or utcnow())
    if row is None:
        raise _agent_unauthorized()
    return DeviceIdentity(
        device_id=row["device_id"],
        owner_user_id=row["owner_user_id"],
        token_hash=row["token_hash"],
    )


async def renew_session(
    conn: AsyncConnection, settings: Settings, device: DeviceIdentity
) -> Paired:
    """A new session token for the device, revoking the presented one, all on ``conn``.

    The new token's ``parent_token_hash`` is the old token's hash. Revoking is
    conditional, so of two renewals racing with one token only one wins (the other
    gets 401 and its new token is rolled back); a revoked or unpaired device is
    refused by :func:`authenticate_device` before this runs.
    """
    now = utcnow()
    if not await repository.revoke_live_session_token(conn, device.token_hash, now):
        raise _agent_unauthorized()
    session = new_token(DEVICE_SESSION_PREFIX)
    expires_at = now + timedelta(seconds=settings.session_token_ttl)
    await repository.insert_session_token(
        conn,
        token_hash=hash_token(session),
        user_id=device.owner_user_id,
        device_id=device.device_id,
        parent_token_hash=device.token_hash,
        now=now,
        expires_at=expires_at,
    )
    return Paired(
        device_id=device.device_id,
        owner_user_id=device.owner_user_id,
        session_token=session,
        expires_at=expires_at,
        new_device=False,
    )


async def report_usb_status(conn: AsyncConnection, device: DeviceIdentity, usb_status: str) -> None:
    """Store the USB status the agent reports for its device."""
    if not await repository.set_usb_status(conn, device.device_id, usb_status, utcnow()):
        raise _agent_unauthorized()  # the device went away since authentication


# -- session tokens -------------------------------------------------------------


async def list_session_tokens(
    conn: AsyncConnection,
    owner_user_id: uuid.UUID,
    device_id: uuid.UUID,
    page: PageRequest,
) -> Page[dict[str, Any]]:
    """The session tokens of the owner's live device (revoked ones too), in creation order."""
    await get_device(conn, owner_user_id, device_id)
    return await repository.list_session_tokens(conn, owner_user_id, device_id, page)


async def revoke_session_token(
    conn: AsyncConnection, owner_user_id: uuid.UUID, token_id: str
) -> uuid.UUID:
    """Revoke the owner's session token; returns its device. Not theirs → 404."""
    device_id = None
    if _TOKEN_ID.match(token_id):
        device_id = await repository.revoke_session_token(conn, owner_user_id, token_id, utcnow())
    if device_id is None:
        raise NotFoundError("Session token not found.")
    return device_id
