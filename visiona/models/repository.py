"""SQL for model records. Takes a connection; never commits.

Every read and write is scoped to the owner and to live rows (``deleted_at IS
NULL``), which is what the partial indexes cover.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.schema import models

_COLUMNS = tuple(models.c)
# Written by an upsert; created_at is deliberately absent: it is kept (seed 000's rule).
_UPSERT_SET = (
    "name",
    "target_chip",
    "file_size",
    "sha256",
    "source",
    "labels",
    "storage_key",
    "faa_object_key",
    "updated_at",
    "uploaded_at",
)


_ORDER = Keyset(models.c.created_at, models.c.id, descending=True, parse_key=uuid.UUID)


def _live(owner_id: uuid.UUID) -> Any:
    return and_(models.c.owner_user_id == owner_id, models.c.deleted_at.is_(None))


def _row(row: Any) -> dict[str, Any]:
    record = dict(row._mapping)
    record["labels"] = list(record["labels"] or [])
    return record


async def upsert(conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any] | None:
    """Insert a model, or update the live row with the same id and owner.

    An update keeps the original ``created_at``. A row with that id that belongs
    to someone else, or is deleted, is left alone and None is returned.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(models).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[models.c.id],
        set_={name: stmt.excluded[name] for name in _UPSERT_SET if name in values},
        where=and_(
            models.c.owner_user_id == stmt.excluded.owner_user_id,
            models.c.deleted_at.is_(None),
        ),
    )
    row = (await conn.execute(stmt.returning(*_COLUMNS))).one_or_none()
    return _row(row) if row else None


async def get(
    conn: AsyncConnection, owner_id: uuid.UUID, model_id: uuid.UUID, *, for_update: bool = False
) -> dict[str, Any] | None:
    """The live model ``model_id`` of ``owner_id``, or None."""
    stmt = select(*_COLUMNS).where(models.c.id == model_id, _live(owner_id))
    if for_update:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).one_or_none()
    return _row(row) if row else None


async def list_page(
    conn: AsyncConnection,
    owner_id: uuid.UUID,
    *,
    chip: str | None,
    source: str | None,
    page: PageRequest,
) -> Page[dict[str, Any]]:
    """One page of the owner's live models, newest first (ties: the higher id first)."""
    stmt = select(*_COLUMNS).where(_live(owner_id))
    if chip is not None:
        stmt = stmt.where(models.c.target_chip == chip)
    if source is not None:
        stmt = stmt.where(models.c.source == source)
    return await paginate(conn, stmt, _ORDER, page, _row)


async def update_fields(
    conn: AsyncConnection,
    owner_id: uuid.UUID,
    model_id: uuid.UUID,
    changes: dict[str, Any],
    now: datetime,
) -> dict[str, Any] | None:
    """Apply ``changes`` to the live model and return it, or None when there is none."""
    stmt = (
        update(models)
        .where(models.c.id == model_id, _live(owner_id))
        .values(**changes, updated_at=now)
        .returning(*_COLUMNS)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return _row(row) if row else None


async def soft_delete(
    conn: AsyncConnection, owner_id: uuid.UUID, model_id: uuid.UUID, now: datetime
) -> dict[str, Any] | None:
    """Mark the live model deleted; return it (with its storage key), or None."""
    stmt = (
        update(models)
        .where(models.c.id == model_id, _live(owner_id))
        .values(deleted_at=now, updated_at=now)
        .returning(*_COLUMNS)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return _row(row) if row else None
