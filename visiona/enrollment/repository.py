"""SQL for enrollment keys. Takes a connection; never commits.

Keys are stored by their sha256 only (``key_hash``); the API and the audit trail name a
key by its random ``id``. A use is counted with one conditional UPDATE (``uses <
max_uses``, unexpired, unrevoked): on PostgreSQL the row lock makes concurrent
enrolments queue and re-check the WHERE, on SQLite there is one writer at a time, so
the count never passes ``max_uses``. Scope: the key's organisation (``org_id``), in
:func:`_mine`; ``owner_user_id`` is who created it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.records import build, columns_of
from visiona.kit.schema import UTCDateTime, enrollment_keys


@dataclass(frozen=True, slots=True)
class EnrollmentKey:
    """An enrollment key (never its plaintext nor its hash)."""

    id: uuid.UUID
    org_id: uuid.UUID
    owner_user_id: uuid.UUID
    name: str
    max_uses: int
    uses: int
    tags: dict[str, Any]
    name_template: str | None
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


_now = bindparam("now", type_=UTCDateTime())
_COLUMNS = columns_of(EnrollmentKey, enrollment_keys)
_key = build(EnrollmentKey)
_ORDER = Keyset(enrollment_keys.c.created_at, enrollment_keys.c.id, parse_key=uuid.UUID)


def _mine(org_id: uuid.UUID) -> ColumnElement[bool]:
    """The keys the organisation holds."""
    return enrollment_keys.c.org_id == org_id


_INSERT = insert(enrollment_keys).returning(*_COLUMNS)
_USE = (
    update(enrollment_keys)
    .where(
        enrollment_keys.c.key_hash == bindparam("hash"),
        enrollment_keys.c.uses < enrollment_keys.c.max_uses,
        enrollment_keys.c.revoked_at.is_(None),
        enrollment_keys.c.expires_at > _now,
    )
    .values(uses=enrollment_keys.c.uses + 1, last_used_at=_now)
    .returning(*_COLUMNS)
)


async def insert_key(
    conn: AsyncConnection,
    *,
    key_hash: str,
    org_id: uuid.UUID,
    owner_user_id: uuid.UUID,
    name: str,
    max_uses: int,
    tags: dict[str, str],
    name_template: str | None,
    now: datetime,
    expires_at: datetime,
) -> EnrollmentKey:
    """Store a new key (its hash only) of ``org_id``, created by ``owner_user_id``."""
    values = {
        "id": uuid.uuid4(),
        "key_hash": key_hash,
        "org_id": org_id,
        "owner_user_id": owner_user_id,
        "name": name,
        "max_uses": max_uses,
        "uses": 0,
        "tags": tags,
        "name_template": name_template,
        "created_at": now,
        "expires_at": expires_at,
    }
    return _key((await conn.execute(_INSERT, values)).one())


async def list_keys(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> Page[EnrollmentKey]:
    """One page of the organisation's keys (revoked and used-up ones too), oldest first."""
    stmt = select(*_COLUMNS).where(_mine(org_id))
    return await paginate(conn, stmt, _ORDER, page, _key)


async def revoke_key(
    conn: AsyncConnection, org_id: uuid.UUID, key_id: uuid.UUID, now: datetime
) -> EnrollmentKey | None:
    """Revoke the organisation's key (a repeat keeps the first time); None when there is
    none."""
    stmt = (
        update(enrollment_keys)
        .where(enrollment_keys.c.id == key_id, _mine(org_id))
        .values(revoked_at=func.coalesce(enrollment_keys.c.revoked_at, now))
        .returning(*_COLUMNS)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return _key(row) if row is not None else None


async def use_key(conn: AsyncConnection, key_hash: str, now: datetime) -> EnrollmentKey | None:
    """Count one use of a usable key in one conditional UPDATE; the key, or None when it is
    unknown, expired, revoked or used up."""
    row = (await conn.execute(_USE, {"hash": key_hash, "now": now})).one_or_none()
    return _key(row) if row is not None else None
