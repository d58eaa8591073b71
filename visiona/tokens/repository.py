"""SQL for pairing tokens and device session tokens. Takes a connection; never commits.

Tokens are stored by their sha256 only (``token_hash``, what a presented token is
looked up by); each also has a random ``public_id``, the id the API and the audit
trail show, which says nothing about the hash. "Now" is bound from Python;
statements without per-call structure are built once, here.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Table,
    Text,
    any_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.database import Database
from visiona.kit.hotread import HotRead
from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.records import build, columns_of
from visiona.kit.schema import UTCDateTime, devices, pairing_tokens, session_tokens


@dataclass(frozen=True, slots=True)
class PairingToken:
    """A pairing token (never its plaintext)."""

    token_hash: str
    public_id: uuid.UUID
    user_id: uuid.UUID
    org_id: uuid.UUID
    device_id: uuid.UUID | None
    created_at: datetime
    expires_at: datetime | None
    used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class SessionToken:
    """A device session token (never its plaintext)."""

    token_hash: str
    public_id: uuid.UUID
    user_id: uuid.UUID
    device_id: uuid.UUID
    parent_token_hash: str | None
    pairing_token_id: uuid.UUID | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class ValidSession:
    """A session token that still holds, and the device and owner it speaks for."""

    token_hash: str
    public_id: uuid.UUID
    pairing_token_id: uuid.UUID | None
    device_id: uuid.UUID
    owner_user_id: uuid.UUID
    org_id: uuid.UUID


_now = bindparam("now", type_=UTCDateTime())
_PAIRING = columns_of(PairingToken, pairing_tokens)
_SESSION = columns_of(SessionToken, session_tokens)
_pairing = build(PairingToken)
_session = build(SessionToken)
# Keyed by the public id, so a cursor (base64 of the last row's pair) carries no hash.
_PAIRING_ORDER = Keyset(
    pairing_tokens.c.created_at, pairing_tokens.c.public_id, parse_key=uuid.UUID
)
_SESSION_ORDER = Keyset(
    session_tokens.c.created_at, session_tokens.c.public_id, parse_key=uuid.UUID
)


def _unexpired(table: Table) -> ColumnElement[bool]:
    return or_(table.c.expires_at.is_(None), table.c.expires_at > _now)


def _revoke_one(table: Table) -> ColumnElement[bool]:
    """The token ``:id`` of the organisation ``:org`` (a session token's through its device)."""
    if table is pairing_tokens:
        return (table.c.public_id == bindparam("id")) & (table.c.org_id == bindparam("org"))
    of_org = select(devices.c.id).where(devices.c.org_id == bindparam("org"))
    return (table.c.public_id == bindparam("id")) & table.c.device_id.in_(of_org)


# A repeated revocation keeps the first time: ``coalesce(revoked_at, :now)``.
_REVOKE_PAIRING = (
    update(pairing_tokens)
    .where(_revoke_one(pairing_tokens))
    .values(revoked_at=func.coalesce(pairing_tokens.c.revoked_at, _now))
    .returning(pairing_tokens.c.public_id)
)
_REVOKE_SESSION = (
    update(session_tokens)
    .where(_revoke_one(session_tokens))
    .values(revoked_at=func.coalesce(session_tokens.c.revoked_at, _now))
    .returning(session_tokens.c.device_id)
)
_INSERT_PAIRING = insert(pairing_tokens).returning(*_PAIRING)
_INSERT_SESSION = insert(session_tokens).returning(*_SESSION)
_CONSUME_PAIRING = (
    update(pairing_tokens)
    .where(
        pairing_tokens.c.token_hash == bindparam("hash"),
        pairing_tokens.c.used_at.is_(None),
        pairing_tokens.c.revoked_at.is_(None),
        _unexpired(pairing_tokens),
    )
    .values(used_at=_now)
    .returning(pairing_tokens.c.user_id, pairing_tokens.c.public_id, pairing_tokens.c.org_id)
)
_BIND_PAIRING = (
    update(pairing_tokens)
    .where(pairing_tokens.c.token_hash == bindparam("hash"))
    .values(device_id=bindparam("device"))
)
_REVOKE_PAIRING_OF_DEVICE = (
    update(pairing_tokens)
    .where(pairing_tokens.c.device_id == bindparam("device"), pairing_tokens.c.revoked_at.is_(None))
    .values(revoked_at=_now)
    .returning(pairing_tokens.c.public_id)
)
_REVOKE_SESSIONS_OF_DEVICE = (
    update(session_tokens)
    .where(session_tokens.c.device_id == bindparam("device"), session_tokens.c.revoked_at.is_(None))
    .values(revoked_at=_now)
    .returning(session_tokens.c.public_id)
)
_REVOKE_LIVE_SESSION = (
    update(session_tokens)
    .where(session_tokens.c.token_hash == bindparam("hash"), session_tokens.c.revoked_at.is_(None))
    .values(revoked_at=_now)
)
_VALID_SESSIONS_OF = (
    select(
        session_tokens.c.token_hash,
        session_tokens.c.public_id,
        session_tokens.c.pairing_token_id,
        session_tokens.c.device_id,
        devices.c.owner_user_id,
        devices.c.org_id,
    )
    .join(devices, devices.c.id == session_tokens.c.device_id)
    .where(
        session_tokens.c.revoked_at.is_(None),
        _unexpired(session_tokens),
        devices.c.deleted_at.is_(None),
    )
)
_VALID_SESSION = _VALID_SESSIONS_OF.where(session_tokens.c.token_hash == bindparam("hash"))
# Many at once (PostgreSQL only: one array parameter, so the statement is prepared once).
_VALID_SESSIONS = _VALID_SESSIONS_OF.where(
    session_tokens.c.token_hash == any_(bindparam("hashes", type_=postgresql.ARRAY(Text)))
)
_valid_session = build(ValidSession)
# Which of many session tokens still hold (the tunnel hub's revocation re-check).
_VALID_HASHES = _VALID_SESSIONS_OF.with_only_columns(session_tokens.c.token_hash).where(
    session_tokens.c.token_hash.in_(bindparam("hashes", expanding=True))
)
# PostgreSQL: the same with one array parameter (prepared once, not one per token).
_VALID_HASHES_ARRAY = _VALID_SESSIONS_OF.with_only_columns(session_tokens.c.token_hash).where(
    session_tokens.c.token_hash == any_(bindparam("hashes", type_=postgresql.ARRAY(Text)))
)
#: The most token hashes one :func:`valid_session_hashes` statement binds (well under
#: SQLite's and asyncpg's limits on parameters).
VALID_HASHES_BATCH = 500
# The tunnel's connect and every agent route check a token with it: a hot read (one
# statement compiled once, run on the driver; visiona/kit/hotread.py).
_VALID_SESSION_HOT = HotRead(_VALID_SESSION, _valid_session)
_VALID_SESSIONS_HOT = HotRead(_VALID_SESSIONS, _valid_session)


# -- pairing tokens -------------------------------------------------------------


async def insert_pairing_token(
    conn: AsyncConnection,
    *,
    token_hash: str,
    user_id: uuid.UUID,
    org_id: uuid.UUID,
    now: datetime,
    expires_at: datetime | None,
) -> PairingToken:
    """Store a new pairing token (its hash only) of ``org_id``, made by ``user_id``."""
    values = {
        "token_hash": token_hash,
        "public_id": uuid.uuid4(),
        "user_id": user_id,
        "org_id": org_id,
        "kind": "pairing",
        "created_at": now,
        "expires_at": expires_at,
    }
    return _pairing((await conn.execute(_INSERT_PAIRING, values)).one())


async def list_pairing_tokens(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> Page[PairingToken]:
    """One page of the organisation's pairing tokens, by (created_at, public id)."""
    stmt = select(*_PAIRING).where(pairing_tokens.c.org_id == org_id)
    return await paginate(conn, stmt, _PAIRING_ORDER, page, _pairing)


async def revoke_pairing_token(
    conn: AsyncConnection, org_id: uuid.UUID, public_id: uuid.UUID, now: datetime
) -> bool:
    """Revoke the organisation's pairing token (idempotent); False when it has no such token."""
    params = {"id": public_id, "org": org_id, "now": now}
    return (await conn.execute(_REVOKE_PAIRING, params)).one_or_none() is not None


@dataclass(frozen=True, slots=True)
class ConsumedPairing:
    """A pairing token just used up: who made it, its public id, its organisation."""

    user_id: uuid.UUID
    public_id: uuid.UUID
    org_id: uuid.UUID


_consumed = build(ConsumedPairing)


async def consume_pairing_token(
    conn: AsyncConnection, token_hash: str, now: datetime
) -> ConsumedPairing | None:
    """Mark a usable pairing token used, in one conditional UPDATE; who owns it, or None.

    Usable means unused, unrevoked and unexpired. On PostgreSQL the row lock this
    takes makes racing exchanges wait; when the winner commits, the losers' WHERE
    no longer matches, so exactly one exchange succeeds.
    """
    row = (await conn.execute(_CONSUME_PAIRING, {"hash": token_hash, "now": now})).one_or_none()
    return _consumed(row) if row is not None else None


async def bind_pairing_token(conn: AsyncConnection, token_hash: str, device_id: uuid.UUID) -> None:
    """Record which device a consumed pairing token paired."""
    await conn.execute(_BIND_PAIRING, {"hash": token_hash, "device": device_id})


async def revoke_pairing_tokens_of_device(
    conn: AsyncConnection, device_id: uuid.UUID, now: datetime
) -> list[uuid.UUID]:
    """Revoke every not yet revoked pairing token bound to the device; their public ids."""
    result = await conn.execute(_REVOKE_PAIRING_OF_DEVICE, {"device": device_id, "now": now})
    return list(result.scalars())


# -- session tokens -------------------------------------------------------------


async def insert_session_token(
    conn: AsyncConnection,
    *,
    token_hash: str,
    user_id: uuid.UUID,
    device_id: uuid.UUID,
    parent_token_hash: str | None,
    pairing_token_id: uuid.UUID | None,
    now: datetime,
    expires_at: datetime | None,
) -> SessionToken:
    """Store a new session token (its hash only); ``pairing_token_id`` starts its chain."""
    values = {
        "token_hash": token_hash,
        "public_id": uuid.uuid4(),
        "user_id": user_id,
        "device_id": device_id,
        "parent_token_hash": parent_token_hash,
        "pairing_token_id": pairing_token_id,
        "created_at": now,
        "expires_at": expires_at,
    }
    return _session((await conn.execute(_INSERT_SESSION, values)).one())


async def list_session_tokens(
    conn: AsyncConnection, org_id: uuid.UUID, device_id: uuid.UUID, page: PageRequest
) -> Page[SessionToken]:
    """One page of the device's session tokens (the organisation's device), by
    (created_at, public id)."""
    of_org = select(devices.c.id).where(devices.c.id == device_id, devices.c.org_id == org_id)
    stmt = select(*_SESSION).where(session_tokens.c.device_id.in_(of_org))
    return await paginate(conn, stmt, _SESSION_ORDER, page, _session)


async def revoke_session_token(
    conn: AsyncConnection, org_id: uuid.UUID, public_id: uuid.UUID, now: datetime
) -> uuid.UUID | None:
    """Revoke the organisation's session token (idempotent); its device id, or None if not
    the organisation's."""
    params = {"id": public_id, "org": org_id, "now": now}
    row = (await conn.execute(_REVOKE_SESSION, params)).one_or_none()
    if row is None:
        return None
    device_id: uuid.UUID = row.device_id
    return device_id


async def revoke_session_tokens_of_device(
    conn: AsyncConnection, device_id: uuid.UUID, now: datetime
) -> list[uuid.UUID]:
    """Revoke every not yet revoked session token of the device; their public ids."""
    result = await conn.execute(_REVOKE_SESSIONS_OF_DEVICE, {"device": device_id, "now": now})
    return list(result.scalars())


async def revoke_live_session_token(conn: AsyncConnection, token_hash: str, now: datetime) -> bool:
    """Revoke the session token if nobody did yet; False when it was already revoked."""
    result = await conn.execute(_REVOKE_LIVE_SESSION, {"hash": token_hash, "now": now})
    return int(result.rowcount) == 1


async def find_valid_session(
    source: Database | AsyncConnection, token_hash: str, now: datetime
) -> ValidSession | None:
    """The session token ``token_hash`` if unrevoked, unexpired and its device is live.

    Given the :class:`Database`, a hot read on the driver; given a connection, on it.
    """
    return await _VALID_SESSION_HOT.one(source, hash=token_hash, now=now)


async def find_valid_sessions(
    db: Database, token_hashes: Sequence[str], now: datetime
) -> list[ValidSession]:
    """:func:`find_valid_session` of many tokens in one statement, those that hold (in no
    particular order). PostgreSQL only (an array parameter); a hot read on the driver."""
    return await _VALID_SESSIONS_HOT.all(db, hashes=list(token_hashes), now=now)


async def valid_session_hashes(
    conn: AsyncConnection, token_hashes: Collection[str], now: datetime
) -> set[str]:
    """The hashes among ``token_hashes`` whose session token is unrevoked, unexpired and
    of a live device (as :func:`find_valid_session`): one statement per
    :data:`VALID_HASHES_BATCH` hashes."""
    hashes = list(token_hashes)
    statement = _VALID_HASHES_ARRAY if conn.dialect.name == "postgresql" else _VALID_HASHES
    valid: set[str] = set()
    for start in range(0, len(hashes), VALID_HASHES_BATCH):
        chunk = hashes[start : start + VALID_HASHES_BATCH]
        result = await conn.execute(statement, {"hashes": chunk, "now": now})
        valid.update(result.scalars())
    return valid
