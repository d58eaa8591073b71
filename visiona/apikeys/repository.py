"""SQL for API keys. Takes a connection; never commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.records import AnyRow
from visiona.kit.schema import api_keys

_k = api_keys.c


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key (never its plaintext: only the hash is stored)."""

    id: uuid.UUID
    org_id: uuid.UUID
    created_by: uuid.UUID
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


_KEY = select(
    _k.id,
    _k.org_id,
    _k.created_by,
    _k.name,
    _k.prefix,
    _k.scopes,
    _k.created_at,
    _k.expires_at,
    _k.last_used_at,
    _k.revoked_at,
)
_ORDER = Keyset(_k.created_at, _k.id, descending=True, parse_key=uuid.UUID)
_BY_HASH = _KEY.where(_k.key_hash == bindparam("key_hash"))
_TOUCH = update(api_keys).where(_k.id == bindparam("key")).values(last_used_at=bindparam("used_at"))


def _key(row: AnyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        org_id=row.org_id,
        created_by=row.created_by,
        name=row.name,
        prefix=row.prefix,
        scopes=tuple(row.scopes.split()),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


async def insert_key(
    conn: AsyncConnection,
    *,
    key_id: uuid.UUID,
    org_id: uuid.UUID,
    created_by: uuid.UUID,
    name: str,
    prefix: str,
    key_hash: str,
    scopes: tuple[str, ...],
    now: datetime,
    expires_at: datetime,
) -> ApiKey:
    """Store a key under its hash."""
    values = {
        "id": key_id,
        "org_id": org_id,
        "created_by": created_by,
        "name": name,
        "prefix": prefix,
        "key_hash": key_hash,
        "scopes": " ".join(scopes),
        "created_at": now,
        "expires_at": expires_at,
    }
    await conn.execute(insert(api_keys), values)
    return ApiKey(key_id, org_id, created_by, name, prefix, scopes, now, expires_at, None, None)


async def by_hash(conn: AsyncConnection, key_hash: str) -> ApiKey | None:
    """The key stored under ``key_hash`` (revoked and expired ones too)."""
    row = (await conn.execute(_BY_HASH, {"key_hash": key_hash})).first()
    return None if row is None else _key(row)


async def list_keys(conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest) -> Page[ApiKey]:
    """The organisation's keys, newest first (revoked and expired ones too)."""
    return await paginate(conn, _KEY.where(_k.org_id == org_id), _ORDER, page, _key)


async def get_key(conn: AsyncConnection, org_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey | None:
    """The key ``key_id`` of ``org_id`` (another organisation's: None)."""
    row = (await conn.execute(_KEY.where(_k.org_id == org_id, _k.id == key_id))).first()
    return None if row is None else _key(row)


async def revoke_key(
    conn: AsyncConnection, org_id: uuid.UUID, key_id: uuid.UUID, now: datetime
) -> bool:
    """Revoke the live key ``key_id`` of ``org_id``; False when there is none."""
    done = await conn.execute(
        update(api_keys)
        .where(_k.org_id == org_id, _k.id == key_id, _k.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(_k.id)
    )
    return done.one_or_none() is not None


async def touch_used(conn: AsyncConnection, used: dict[uuid.UUID, datetime]) -> None:
    """Write ``last_used_at`` of every key of ``used`` (one executemany)."""
    if used:
        rows = [{"key": key_id, "used_at": at} for key_id, at in used.items()]
        await conn.execute(_TOUCH, rows)
