"""Use cases for pairing tokens and device session tokens.

Every function takes the connection of a unit of work opened at the edge and never
commits. :func:`authenticate_device` is how the tunnel and the agent routes check a
session token; :func:`session_holds` is how the tunnel re-checks one after a
revocation, :func:`sessions_not_holding` how a cluster node re-checks all of its
tunnels' at once. Each change records its audit event on the same connection; tokens
are named there (and in the API) by their random public id, never by their hash.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.service import Actor
from visiona.kit.clock import utcnow
from visiona.kit.database import Database
from visiona.kit.errors import NotFoundError, UnauthorizedError, ValidationFailedError
from visiona.kit.pagination import Page, PageRequest
from visiona.kit.settings import Settings
from visiona.kit.tokens import (
    DEVICE_SESSION_PREFIX,
    PAIRING_PREFIX,
    has_prefix,
    hash_token,
    new_token,
)
from visiona.tokens import repository
from visiona.tokens.batch import SessionChecks
from visiona.tokens.repository import PairingToken, SessionToken

# One message for every failing agent token: no oracle for used / expired / unknown.
AGENT_TOKEN_REJECTED = "The token is not valid."  # noqa: S105 - a message, not a secret


def agent_unauthorized() -> UnauthorizedError:
    """The one 401 for every failing agent token."""
    return UnauthorizedError(AGENT_TOKEN_REJECTED, headers={"WWW-Authenticate": "Bearer"})


def parse_token_id(token_id: str) -> uuid.UUID | None:
    """A token's public id from a path segment; None when it is not one."""
    try:
        return uuid.UUID(token_id)
    except ValueError:
        return None


# -- pairing tokens -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
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


async def create_pairing_token(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    ttl: int,
    *,
    now: datetime | None = None,
    actor: Actor | None = None,
) -> IssuedToken:
    """Issue a pairing token into ``org_id`` (made by ``user_id``) valid for ``ttl`` seconds."""
    token = new_token(PAIRING_PREFIX)
    now = now or utcnow()
    expires_at = now + timedelta(seconds=ttl)
    row = await repository.insert_pairing_token(
        conn,
        token_hash=hash_token(token),
        user_id=user_id,
        org_id=org_id,
        now=now,
        expires_at=expires_at,
    )
    await audit.record(
        conn,
        "pairing_token.created",
        actor=actor or Actor.user(user_id),
        org_id=org_id,
        target_id=row.public_id,
        detail={"expires_at": expires_at.isoformat()},
    )
    return IssuedToken(id=str(row.public_id), token=token, expires_at=expires_at)


async def list_pairing_tokens(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> Page[PairingToken]:
    """The organisation's pairing tokens (used and revoked ones too), in creation order."""
    return await repository.list_pairing_tokens(conn, org_id, page)


async def revoke_pairing_token(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    token_id: str,
    *,
    actor: Actor | None = None,
) -> None:
    """Revoke the organisation's pairing token; a malformed, unknown or foreign id is a 404."""
    public_id = parse_token_id(token_id)
    now = utcnow()
    if public_id is None or not await repository.revoke_pairing_token(conn, org_id, public_id, now):
        raise NotFoundError("Pairing token not found.")
    await audit.record(
        conn,
        "pairing_token.revoked",
        actor=actor or Actor.user(user_id),
        org_id=org_id,
        target_id=public_id,
    )


@dataclass(frozen=True, slots=True)
class UsedPairing:
    """A pairing token just used up: its hash (to bind it), public id and owner."""

    token_hash: str
    public_id: uuid.UUID
    owner_user_id: uuid.UUID
    org_id: uuid.UUID


async def consume_pairing_token(
    conn: AsyncConnection, pairing_token: str, now: datetime
) -> UsedPairing:
    """Use up a pairing token. Any bad token is the same 401.

    One conditional UPDATE: the winner of a race takes it, every other caller waits
    for the winner's commit and then gets the 401. Its ``pairing_token.used`` event
    is recorded by :func:`issue_session_token`, once the device is known.
    """
    if not has_prefix(pairing_token, PAIRING_PREFIX):
        raise agent_unauthorized()
    token_hash = hash_token(pairing_token)
    used = await repository.consume_pairing_token(conn, token_hash, now)
    if used is None:
        raise agent_unauthorized()
    return UsedPairing(
        token_hash=token_hash,
        public_id=used.public_id,
        owner_user_id=used.user_id,
        org_id=used.org_id,
    )


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """A new device session token: the plaintext (shown once), public id, end of life."""

    token: str
    public_id: uuid.UUID
    expires_at: datetime


async def issue_session_token(
    conn: AsyncConnection,
    settings: Settings,
    *,
    pairing: UsedPairing,
    device_id: uuid.UUID,
    now: datetime,
) -> IssuedSession:
    """Bind the consumed pairing token to the device and issue its session token.

    Records ``pairing_token.used`` and ``session_token.issued``, the device as actor.
    """
    owner_user_id = pairing.owner_user_id
    await repository.bind_pairing_token(conn, pairing.token_hash, device_id)
    token = new_token(DEVICE_SESSION_PREFIX)
    expires_at = now + timedelta(seconds=settings.session_token_ttl)
    row = await repository.insert_session_token(
        conn,
        token_hash=hash_token(token),
        user_id=owner_user_id,
        device_id=device_id,
        parent_token_hash=pairing.token_hash,
        pairing_token_id=pairing.public_id,
        now=now,
        expires_at=expires_at,
    )
    actor = Actor.device(device_id)
    await audit.record(
        conn,
        "pairing_token.used",
        actor=actor,
        owner_id=owner_user_id,
        org_id=pairing.org_id,
        target_id=pairing.public_id,
        device_id=device_id,
    )
    await audit.record(
        conn,
        "session_token.issued",
        actor=actor,
        owner_id=owner_user_id,
        org_id=pairing.org_id,
        target_id=row.public_id,
        device_id=device_id,
        detail={"pairing_token_id": str(pairing.public_id)},
    )
    return IssuedSession(token=token, public_id=row.public_id, expires_at=expires_at)


async def issue_enrolled_session(
    conn: AsyncConnection,
    settings: Settings,
    *,
    org_id: uuid.UUID,
    owner_user_id: uuid.UUID,
    device_id: uuid.UUID,
    now: datetime,
) -> IssuedSession:
    """Issue the session token of a device enrolled with an enrollment key (no pairing
    token starts its chain); records ``session_token.issued``, the device as actor."""
    token = new_token(DEVICE_SESSION_PREFIX)
    expires_at = now + timedelta(seconds=settings.session_token_ttl)
    row = await repository.insert_session_token(
        conn,
        token_hash=hash_token(token),
        user_id=owner_user_id,
        device_id=device_id,
        parent_token_hash=None,
        pairing_token_id=None,
        now=now,
        expires_at=expires_at,
    )
    await audit.record(
        conn,
        "session_token.issued",
        actor=Actor.device(device_id),
        owner_id=owner_user_id,
        org_id=org_id,
        target_id=row.public_id,
        device_id=device_id,
        detail={"pairing_token_id": None},
    )
    return IssuedSession(token=token, public_id=row.public_id, expires_at=expires_at)


async def renew_session(
    conn: AsyncConnection, settings: Settings, device: DeviceIdentity, now: datetime
) -> IssuedSession:
    """A new session token for the device, revoking the presented one, all on ``conn``.

    The new token's ``parent_token_hash`` is the old token's hash. Revoking is
    conditional, so of two renewals racing with one token only one wins (the other
    gets 401 and its new token is rolled back); a revoked or unpaired device is
    refused by :func:`authenticate_device` before this runs.
    """
    if not await repository.revoke_live_session_token(conn, device.token_hash, now):
        raise agent_unauthorized()
    token = new_token(DEVICE_SESSION_PREFIX)
    expires_at = now + timedelta(seconds=settings.session_token_ttl)
    row = await repository.insert_session_token(
        conn,
        token_hash=hash_token(token),
        user_id=device.owner_user_id,
        device_id=device.device_id,
        parent_token_hash=device.token_hash,
        pairing_token_id=device.pairing_token_id,
        now=now,
        expires_at=expires_at,
    )
    await audit.record(
        conn,
        "session_token.renewed",
        actor=Actor.device(device.device_id),
        owner_id=device.owner_user_id,
        org_id=device.org_id,
        target_id=row.public_id,
        device_id=device.device_id,
        detail={"previous_id": str(device.session_token_id)},
    )
    return IssuedSession(token=token, public_id=row.public_id, expires_at=expires_at)


# -- session tokens -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """An agent authenticated by its session token."""

    device_id: uuid.UUID
    owner_user_id: uuid.UUID
    org_id: uuid.UUID
    token_hash: str
    session_token_id: uuid.UUID
    pairing_token_id: uuid.UUID | None


async def authenticate_device(
    source: Database | AsyncConnection,
    token: str | None,
    *,
    now: datetime | None = None,
    checks: SessionChecks | None = None,
) -> DeviceIdentity:
    """The device a session token speaks for; any failure is the same 401.

    Valid means: a ``vst_`` token whose hash is stored, unrevoked, unexpired, and
    whose device is not deleted. This is what the tunnel calls before the
    WebSocket upgrade, with the :class:`Database` (a hot read on the driver, no unit
    of work) and its :class:`~visiona.tokens.batch.SessionChecks` (``checks``: a connect
    storm's checks share statements); the agent routes pass their unit of work's
    connection.
    """
    if not token or not has_prefix(token, DEVICE_SESSION_PREFIX):
        raise agent_unauthorized()
    token_hash = hash_token(token)
    if checks is not None:
        found = await checks.find(token_hash)
    else:
        found = await repository.find_valid_session(source, token_hash, now or utcnow())
    if found is None:
        raise agent_unauthorized()
    return DeviceIdentity(
        device_id=found.device_id,
        owner_user_id=found.owner_user_id,
        org_id=found.org_id,
        token_hash=found.token_hash,
        session_token_id=found.public_id,
        pairing_token_id=found.pairing_token_id,
    )


async def session_holds(conn: AsyncConnection, token_hash: str) -> bool:
    """Whether the session token ``token_hash`` is still valid (unrevoked, unexpired, live)."""
    return await repository.find_valid_session(conn, token_hash, utcnow()) is not None


async def sessions_not_holding(conn: AsyncConnection, token_hashes: Collection[str]) -> set[str]:
    """The hashes among ``token_hashes`` whose session token no longer holds (revoked,
    expired, its device deleted, or unknown): :func:`session_holds` for many at once."""
    wanted = set(token_hashes)
    if not wanted:
        return set()
    return wanted - await repository.valid_session_hashes(conn, wanted, utcnow())


async def list_session_tokens(
    conn: AsyncConnection, org_id: uuid.UUID, device_id: uuid.UUID, page: PageRequest
) -> Page[SessionToken]:
    """The session tokens of the organisation's device (revoked ones too), in creation order.

    The caller checks first that the device is the organisation's and live (a 404 otherwise).
    """
    return await repository.list_session_tokens(conn, org_id, device_id, page)


async def revoke_session_token(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    token_id: str,
    *,
    actor: Actor | None = None,
) -> uuid.UUID:
    """Revoke the organisation's session token; returns its device. Not its → 404."""
    device_id = None
    public_id = parse_token_id(token_id)
    now = utcnow()
    if public_id is not None:
        device_id = await repository.revoke_session_token(conn, org_id, public_id, now)
    if device_id is None:
        raise NotFoundError("Session token not found.")
    await audit.record(
        conn,
        "session_token.revoked",
        actor=actor or Actor.user(user_id),
        org_id=org_id,
        target_id=public_id,
        device_id=device_id,
    )
    return device_id


@dataclass(frozen=True, slots=True)
class Revoked:
    """The tokens of a device a revocation reached (their public ids)."""

    pairing_tokens: list[uuid.UUID]
    session_tokens: list[uuid.UUID]


async def revoke_all_of_device(
    conn: AsyncConnection, device_id: uuid.UUID, now: datetime
) -> Revoked:
    """Revoke every pairing and session token bound to the device (unpair)."""
    pairing = await repository.revoke_pairing_tokens_of_device(conn, device_id, now)
    sessions = await repository.revoke_session_tokens_of_device(conn, device_id, now)
    return Revoked(pairing_tokens=pairing, session_tokens=sessions)
