"""SQL for model records. Takes a connection; never commits.

Every read and write is scoped to the organisation (``org_id``) and to live rows (``deleted_at IS
NULL``), which is what the partial indexes cover. Statements without per-call
structure are built once, here, with bind parameters.
"""

from __future__ import annotations

import uuid
from dataclasses import astuple, dataclass, fields
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Insert, and_, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.records import AnyRow, columns_of
from visiona.kit.schema import UTCDateTime, models
from visiona.models.schemas import ModelSource


@dataclass(frozen=True, slots=True)
class Model:
    """A live model record (its file lives in object storage under ``storage_key``)."""

    id: uuid.UUID
    owner_user_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    target_chip: str
    file_size: int
    sha256: str | None
    source: ModelSource
    labels: tuple[str, ...]
    storage_key: str | None
    faa_object_key: str | None
    created_at: datetime
    updated_at: datetime
    uploaded_at: datetime | None


@dataclass(frozen=True, slots=True)
class ModelWrite:
    """Every column an upsert writes (``created_at`` only when the row is new)."""

    id: uuid.UUID
    owner_user_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    target_chip: str
    file_size: int
    sha256: str | None
    source: ModelSource
    labels: tuple[str, ...]
    storage_key: str | None
    created_at: datetime
    updated_at: datetime
    uploaded_at: datetime | None
    faa_object_key: str | None = None


_COLUMNS = columns_of(Model, models)
_WRITE_NAMES = tuple(field.name for field in fields(ModelWrite))
_ORDER = Keyset(models.c.created_at, models.c.id, descending=True, parse_key=uuid.UUID)
_now = bindparam("now", type_=UTCDateTime())
_live = models.c.deleted_at.is_(None)
_mine = and_(models.c.id == bindparam("model_id"), models.c.org_id == bindparam("org"), _live)
_GET = select(*_COLUMNS).where(_mine)
_GET_FOR_UPDATE = _GET.with_for_update()
_SOFT_DELETE = (
    update(models).where(_mine).values(deleted_at=_now, updated_at=_now).returning(*_COLUMNS)
)
_FIND_BY_NAME = select(models.c.id).where(
    models.c.org_id == bindparam("org"),
    models.c.name == bindparam("model_name"),
    models.c.target_chip == bindparam("chip"),
    _live,
)


def _model(row: AnyRow) -> Model:
    (id_, owner, org, name, chip, size, sha256, source, labels, key, faa, created, updated, up) = (
        row
    )
    return Model(
        id_,
        owner,
        org,
        name,
        chip,
        size,
        sha256,
        ModelSource(source),
        tuple(labels or ()),
        key,
        faa,
        created,
        updated,
        up,
    )


@cache
def _upsert(dialect: str) -> Insert:
    """``INSERT … ON CONFLICT (id) DO UPDATE … WHERE same organisation and live`` for
    ``dialect``.

    The ``SET`` list leaves out ``id``, ``owner_user_id``, ``org_id`` and ``created_at``: an
    update
    keeps the original ``created_at`` (seed 000's rule).
    """
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = make(models)
    kept = {"id", "owner_user_id", "org_id", "created_at"}
    return stmt.on_conflict_do_update(
        index_elements=[models.c.id],
        set_={name: stmt.excluded[name] for name in _WRITE_NAMES if name not in kept},
        where=and_(models.c.org_id == stmt.excluded.org_id, _live),
    ).returning(*_COLUMNS)


async def upsert(conn: AsyncConnection, model: ModelWrite) -> Model | None:
    """Insert a model, or update the live row with the same id and owner.

    An update keeps the original ``created_at``. A row with that id that belongs
    to someone else, or is deleted, is left alone and None is returned.
    """
    values = dict(zip(_WRITE_NAMES, astuple(model), strict=True))
    values["source"] = model.source.value
    values["labels"] = list(model.labels)
    row = (await conn.execute(_upsert(conn.dialect.name), values)).one_or_none()
    return _model(row) if row else None


async def get(
    conn: AsyncConnection, org_id: uuid.UUID, model_id: uuid.UUID, *, for_update: bool = False
) -> Model | None:
    """The live model ``model_id`` of ``org_id``, or None."""
    stmt = _GET_FOR_UPDATE if for_update else _GET
    row = (await conn.execute(stmt, {"model_id": model_id, "org": org_id})).one_or_none()
    return _model(row) if row else None


async def list_page(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    *,
    chip: str | None,
    source: ModelSource | None,
    page: PageRequest,
) -> Page[Model]:
    """One page of the organisation's live models, newest first (ties: the higher id first)."""
    stmt = select(*_COLUMNS).where(models.c.org_id == org_id, _live)
    if chip is not None:
        stmt = stmt.where(models.c.target_chip == chip)
    if source is not None:
        stmt = stmt.where(models.c.source == source.value)
    return await paginate(conn, stmt, _ORDER, page, _model)


async def update_fields(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    model_id: uuid.UUID,
    *,
    name: str | None,
    labels: list[str] | None,
    now: datetime,
) -> Model | None:
    """Set the given ``name`` and/or ``labels`` of the live model; None when there is none."""
    changes: dict[str, Any] = {"updated_at": now}
    if name is not None:
        changes["name"] = name
    if labels is not None:
        changes["labels"] = labels
    stmt = (
        update(models)
        .where(models.c.id == model_id, models.c.org_id == org_id, _live)
        .values(**changes)
        .returning(*_COLUMNS)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return _model(row) if row else None


async def soft_delete(
    conn: AsyncConnection, org_id: uuid.UUID, model_id: uuid.UUID, now: datetime
) -> Model | None:
    """Mark the live model deleted; return it (with its storage key), or None."""
    params = {"model_id": model_id, "org": org_id, "now": now}
    row = (await conn.execute(_SOFT_DELETE, params)).one_or_none()
    return _model(row) if row else None


async def find_live_by_name(
    conn: AsyncConnection, org_id: uuid.UUID, name: str, target_chip: str
) -> uuid.UUID | None:
    """The id of the organisation's live model with this name and chip (the demo seed's lookup)."""
    params = {"org": org_id, "model_name": name, "chip": target_chip}
    row = (await conn.execute(_FIND_BY_NAME, params)).first()
    if row is None:
        return None
    model_id: uuid.UUID = row.id
    return model_id
