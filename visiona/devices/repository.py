"""SQL for devices, pairing tokens and session tokens. Takes a connection; never commits.

Every query a user can reach is scoped to the owner; "now" is always bound from
Python so SQLite's text timestamps and PostgreSQL's ``timestamptz`` compare alike.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, case, func, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.schema import UTCDateTime, devices, models, pairing_tokens, session_tokens

_DEVICE = (
    devices.c.id,
    devices.c.owner_user_id,
    devices.c.name,
    devices.c.device_type,
    devices.c.serial_number,
    devices.c.remote_status,
    devices.c.status,
    devices.c.last_seen_at,
    devices.c.last_connected_at,
    devices.c.paired_at,
    devices.c.created_at,
    devices.c.updated_at,
)
_PAIRING = (
    pairing_tokens.c.token_hash,
    pairing_tokens.c.user_id,
    pairing_tokens.c.device_id,
    pairing_tokens.c.created_at,
    pairing_tokens.c.expires_at,
    pairing_tokens.c.used_at,
    pairing_tokens.c.revoked_at,
)
_SESSION = (
    session_tokens.c.token_hash,
    session_tokens.c.user_id,
    session_tokens.c.device_id,
    session_tokens.c.parent_token_hash,
    session_tokens.c.created_at,
    session_tokens.c.expires_at,
    session_tokens.c.revoked_at,
)
_live_device = devices.c.deleted_at.is_(None)


def _remote_status(stale_before: datetime | None) -> Any:
    """``remote_status`` as read: a device not seen since ``stale_before`` reads ``offline``.

    A node that crashed cannot write ``offline`` for its devices; their ``last_seen_at``
    stops moving (the tunnel refreshes it every status interval), so readers pass
    ``stale_before`` = now - three intervals and such devices read as offline.
    """
    if stale_before is None:
        return devices.c.remote_status
    stale = and_(
        devices.c.remote_status != "offline",
        devices.c.last_seen_at < stale_before,
    )
    return case((stale, literal("offline")), else_=devices.c.remote_status)


def _device_columns(stale_before: datetime | None) -> tuple[Any, ...]:
    if stale_before is None:
        return _DEVICE
    status = _remote_status(stale_before).label("remote_status")
    return tuple(status if col is devices.c.remote_status else col for col in _DEVICE)


_DEVICE_ORDER = Keyset(devices.c.created_at, devices.c.id, parse_key=uuid.UUID)
_PAIRING_ORDER = Keyset(pairing_tokens.c.created_at, pairing_tokens.c.token_hash)
_SESSION_ORDER = Keyset(session_tokens.c.created_at, session_tokens.c.token_hash)


def _as_dict(row: Row[Any]) -> dict[str, Any]:
    return dict(row._mapping)


def _keep_first(column: Any, now: datetime) -> ColumnElement[datetime]:
    """``column`` if already set, else ``now``: a repeated revocation keeps the first time."""
    return func.coalesce(column, literal(now, UTCDateTime()))


def _unexpired(expires_at: Any, now: datetime) -> ColumnElement[bool]:
    return or_(expires_at.is_(None), expires_at > now)


# -- devices ------------------------------------------------------------------


async def insert_device_if_absent(
    conn: AsyncConnection,
    *,
    device_id: uuid.UUID,
    owner_user_id: uuid.UUID,
    name: str,
    device_type: str | None,
    serial_number: str,
    now: datetime,
    paired_at: datetime | None = None,
) -> dict[str, Any] | None:
    """Insert a device unless the owner has a live one with this serial (then None).

    ``ON CONFLICT DO NOTHING`` on the partial unique index: a racing insert waits
    for the other transaction instead of failing it.
    """
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = (
        dialect_insert(devices)
        .values(
            id=device_id,
            owner_user_id=owner_user_id,
            name=name,
            device_type=device_type,
            serial_number=serial_number,
            remote_status="offline",
            status="unknown",
            created_at=now,
            updated_at=now,
            paired_at=paired_at,
        )
        .on_conflict_do_nothing(
            index_elements=[devices.c.owner_user_id, devices.c.serial_number],
            index_where=_live_device,
        )
        .returning(*_DEVICE)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return dict(row._mapping) if row else None


async def get_device(
    conn: AsyncConnection,
    owner_user_id: uuid.UUID,
    device_id: uuid.UUID,
    *,
    stale_before: datetime | None = None,
) -> dict[str, Any] | None:
    """The owner's live device ``device_id`` (``stale_before``: see :func:`_remote_status`)."""
    row = (
        await conn.execute(
            select(*_device_columns(stale_before)).where(
                devices.c.id == device_id, devices.c.owner_user_id == owner_user_id, _live_device
            )
        )
    ).one_or_none()
    return dict(row._mapping) if row else None


async def get_live_device_by_serial(
    conn: AsyncConnection, owner_user_id: uuid.UUID, serial_number: str
) -> dict[str, Any] | None:
    """The owner's live device with ``serial_number``."""
    row = (
        await conn.execute(
            select(*_DEVICE).where(
                devices.c.owner_user_id == owner_user_id,
                devices.c.serial_number == serial_number,
                _live_device,
            )
        )
    ).one_or_none()
    return dict(row._mapping) if row else None


async def list_devices(
    conn: AsyncConnection,
    owner_user_id: uuid.UUID,
    *,
    remote_status: str | None,
    status: str | None,
    page: PageRequest,
    stale_before: datetime | None = None,
) -> Page[dict[str, Any]]:
    """One page of the owner's live devices, by (created_at, id)."""
    stmt = select(*_device_columns(stale_before)).where(
        devices.c.owner_user_id == owner_user_id, _live_device
    )
    if remote_status is not None:
        stmt = stmt.where(_remote_status(stale_before) == remote_status)
    if status is not None:
        stmt = stmt.where(devices.c.status == status)
    return await paginate(conn, stmt, _DEVICE_ORDER, page, _as_dict)


async def rename_device(
    conn: AsyncConnection,
    owner_user_id: uuid.UUID,
    device_id: uuid.UUID,
    *,
    name: str,
    now: datetime,
    stale_before: datetime | None = None,
) -> dict[str, Any] | None:
    """Rename the owner's live device; None when there is no such device."""
    row = (
        await conn.execute(
            update(devices)
            .where(
                devices.c.id == device_id, devices.c.owner_user_id == owner_user_id, _live_device
            )
            .values(name=name, updated_at=now)
            .returning(*_device_columns(stale_before))
        )
    ).one_or_none()
    return dict(row._mapping) if row else None


async def mark_paired(conn: AsyncConnection, device_id: uuid.UUID, now: datetime) -> bool:
    """Record that an agent paired the live device now; False if it was deleted meanwhile."""
    row = (
        await conn.execute(
            update(devices)
            .where(devices.c.id == device_id, _live_device)
            .values(paired_at=now, updated_at=now)
            .returning(devices.c.id)
        )
    ).one_or_none()
    return row is not None


async def soft_delete_device(
    conn: AsyncConnection, owner_user_id: uuid.UUID, device_id: uuid.UUID, now: datetime
) -> bool:
    """Soft-delete the owner's live device; False when there is no such device."""
    row = (
        await conn.execute(
            update(devices)
            .where(
                devices.c.id == device_id, devices.c.owner_user_id == owner_user_id, _live_device
            )
            .values(deleted_at=now, updated_at=now, remote_status="offline")
            .returning(devices.c.id)
        )
    ).one_or_none()
    return row is not None


async def set_usb_status(
    conn: AsyncConnection, device_id: uuid.UUID, status: str, now: datetime
) -> bool:
    """Store the agent-reported USB status of a live device."""
    row = (
        await conn.execute(
            update(devices)
            .where(devices.c.id == device_id, _live_device)
            .values(status=status, updated_at=now)
            .returning(devices.c.id)
        )
    ).one_or_none()
    return row is not None


# -- pairing tokens -------------------------------------------------------------


async def insert_pairing_token(
    conn: AsyncConnection,
    *,
    token_hash: str,
    user_id: uuid.UUID,
    now: datetime,
    expires_at: datetime | None,
) -> dict[str, Any]:
    """Store a new pairing token (its hash only)."""
    row = (
        await conn.execute(
            insert(pairing_tokens)
            .values(
                token_hash=token_hash,
                user_id=user_id,
                kind="pairing",
                created_at=now,
                expires_at=expires_at,
            )
            .returning(*_PAIRING)
        )
    ).one()
    return dict(row._mapping)


async def list_pairing_tokens(
    conn: AsyncConnection, user_id: uuid.UUID, page: PageRequest
) -> Page[dict[str, Any]]:
    """One page of the user's pairing tokens, by (created_at, hash)."""
    stmt = select(*_PAIRING).where(pairing_tokens.c.user_id == user_id)
    return await paginate(conn, stmt, _PAIRING_ORDER, page, _as_dict)


async def revoke_pairing_token(
    conn: AsyncConnection, user_id: uuid.UUID, token_hash: str, now: datetime
) -> bool:
    """Revoke the user's pairing token (idempotent); False when the user has no such token."""
    row = (
        await conn.execute(
            update(pairing_tokens)
            .where(pairing_tokens.c.token_hash == token_hash, pairing_tokens.c.user_id == user_id)
            .values(revoked_at=_keep_first(pairing_tokens.c.revoked_at, now))
            .returning(pairing_tokens.c.token_hash)
        )
    ).one_or_none()
    return row is not None


async def consume_pairing_token(
    conn: AsyncConnection, token_hash: str, now: datetime
) -> uuid.UUID | None:
    """Mark a usable pairing token used, in one conditional UPDATE; its owner, or None.

    Usable means unused, unrevoked and unexpired. On PostgreSQL the row lock this
    takes makes racing exchanges wait; when the winner commits, the losers' WHERE
    no longer matches, so exactly one exchange succeeds.
    """
    row = (
        await conn.execute(
            update(pairing_tokens)
            .where(
                pairing_tokens.c.token_hash == token_hash,
                pairing_tokens.c.used_at.is_(None),
                pairing_tokens.c.revoked_at.is_(None),
                _unexpired(pairing_tokens.c.expires_at, now),
            )
            .values(used_at=now)
            .returning(pairing_tokens.c.user_id)
        )
    ).one_or_none()
    return row.user_id if row else None


async def bind_pairing_token(conn: AsyncConnection, token_hash: str, device_id: uuid.UUID) -> None:
    """Record which device a consumed pairing token paired."""
    await conn.execute(
        update(pairing_tokens)
        .where(pairing_tokens.c.token_hash == token_hash)
        .values(device_id=device_id)
    )


async def revoke_pairing_tokens_of_device(
    conn: AsyncConnection, device_id: uuid.UUID, now: datetime
) -> int:
    """Revoke every not yet revoked pairing token bound to the device; how many."""
    result = await conn.execute(
        update(pairing_tokens)
        .where(pairing_tokens.c.device_id == device_id, pairing_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount)


# -- session tokens -------------------------------------------------------------


async def insert_session_token(
    conn: AsyncConnection,
    *,
    token_hash: str,
    user_id: uuid.UUID,
    device_id: uuid.UUID,
    parent_token_hash: str | None,
    now: datetime,
    expires_at: datetime | None,
) -> dict[str, Any]:
    """Store a new session token (its hash only)."""
    row = (
        await conn.execute(
            insert(session_tokens)
            .values(
                token_hash=token_hash,
                user_id=user_id,
                device_id=device_id,
                parent_token_hash=parent_token_hash,
                created_at=now,
                expires_at=expires_at,
            )
            .returning(*_SESSION)
        )
    ).one()
    return dict(row._mapping)


async def list_session_tokens(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    device_id: uuid.UUID,
    page: PageRequest,
) -> Page[dict[str, Any]]:
    """One page of the device's session tokens, by (created_at, hash)."""
    stmt = select(*_SESSION).where(
        session_tokens.c.user_id == user_id, session_tokens.c.device_id == device_id
    )
    return await paginate(conn, stmt, _SESSION_ORDER, page, _as_dict)


async def revoke_session_token(
    conn: AsyncConnection, user_id: uuid.UUID, token_hash: str, now: datetime
) -> uuid.UUID | None:
    """Revoke the user's session token (idempotent); its device id, or None if not theirs."""
    row = (
        await conn.execute(
            update(session_tokens)
            .where(session_tokens.c.token_hash == token_hash, session_tokens.c.user_id == user_id)
            .values(revoked_at=_keep_first(session_tokens.c.revoked_at, now))
            .returning(session_tokens.c.device_id)
        )
    ).one_or_none()
    return row.device_id if row else None


async def revoke_live_session_token(conn: AsyncConnection, token_hash: str, now: datetime) -> bool:
    """Revoke the session token if nobody did yet; False when it was already revoked."""
    result = await conn.execute(
        update(session_tokens)
        .where(session_tokens.c.token_hash == token_hash, session_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount) == 1


async def revoke_session_tokens_of_device(
    conn: AsyncConnection, device_id: uuid.UUID, now: datetime
) -> int:
    """Revoke every not yet revoked session token of the device; how many."""
    result = await conn.execute(
        update(session_tokens)
        .where(session_tokens.c.device_id == device_id, session_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount)


async def find_valid_session(
    conn: AsyncConnection, token_hash: str, now: datetime
) -> dict[str, Any] | None:
    """The session token ``token_hash`` if unrevoked, unexpired and its device is live."""
    row = (
        await conn.execute(
            select(
                session_tokens.c.token_hash,
                session_tokens.c.device_id,
                devices.c.owner_user_id,
            )
            .join(devices, devices.c.id == session_tokens.c.device_id)
            .where(
                session_tokens.c.token_hash == token_hash,
                session_tokens.c.revoked_at.is_(None),
                _unexpired(session_tokens.c.expires_at, now),
                _live_device,
            )
        )
    ).one_or_none()
    return dict(row._mapping) if row else None


# -- models (demo data only; the models feature owns the rest) ------------------


async def find_live_model(
    conn: AsyncConnection, owner_user_id: uuid.UUID, name: str, target_chip: str
) -> uuid.UUID | None:
    """The id of the owner's live model with this name and chip."""
    row = (
        await conn.execute(
            select(models.c.id).where(
                models.c.owner_user_id == owner_user_id,
                models.c.name == name,
                models.c.target_chip == target_chip,
                models.c.deleted_at.is_(None),
            )
        )
    ).first()
    return row.id if row else None


async def insert_model_record(
    conn: AsyncConnection,
    *,
    model_id: uuid.UUID,
    owner_user_id: uuid.UUID,
    name: str,
    target_chip: str,
    source: str,
    labels: list[str],
    now: datetime,
) -> None:
    """Insert a model row without a file (the demo seed's record)."""
    await conn.execute(
        insert(models).values(
            id=model_id,
            owner_user_id=owner_user_id,
            name=name,
            target_chip=target_chip,
            file_size=0,
            source=source,
            labels=labels,
            created_at=now,
            updated_at=now,
        )
    )
