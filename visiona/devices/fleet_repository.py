"""SQL for device tags and selectors, and for the model a device runs. Takes a connection;
never commits.

Tags live in ``device_tags`` (one row per user tag; built-ins are computed from
``devices.device_type``). A selector becomes a ``WHERE`` of ``EXISTS``/``NOT EXISTS``
subqueries on ``device_tags`` (served by ``idx_device_tags_key_value``), the same SQL on
SQLite and PostgreSQL, so it combines with every other filter and with keyset pagination.
Ownership is checked by the caller (:func:`visiona.devices.service.require_device`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    and_,
    bindparam,
    delete,
    exists,
    func,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.devices.selectors import (
    Equals,
    Exists,
    In,
    NotEquals,
    NotExists,
    NotIn,
    Requirement,
    Selector,
)
from visiona.kit.database import Database
from visiona.kit.hotread import HotRead
from visiona.kit.schema import device_tags, devices

# -- selectors --------------------------------------------------------------------------


def _has_tag(key: str, values: tuple[str, ...] | None) -> ColumnElement[bool]:
    """``EXISTS`` a user tag ``key`` on the device (with one of ``values``, when given)."""
    where = [device_tags.c.device_id == devices.c.id, device_tags.c.key == key]
    if values is not None:
        value = device_tags.c.value
        where.append(value == values[0] if len(values) == 1 else value.in_(values))
    return exists(select(device_tags.c.device_id).where(*where))


def _builtin(key: str) -> ColumnElement[Any] | None:
    """The expression of a built-in tag (NULL when the device type is unknown), or None."""
    kind = func.nullif(func.trim(devices.c.device_type), "")
    if key == "chip":
        return func.lower(kind)
    if key == "type":
        return kind
    return None


def _builtin_requirement(req: Requirement, tag: ColumnElement[Any]) -> ColumnElement[bool]:
    """``req`` over a built-in tag's expression (NULL: the device has no such tag)."""
    match req:
        case Exists():
            return tag.is_not(None)
        case NotExists():
            return tag.is_(None)
        case Equals():
            return tag == req.value
        case NotEquals():
            return or_(tag.is_(None), tag != req.value)
        case In():
            return tag.in_(req.values)
        case NotIn():
            return or_(tag.is_(None), tag.not_in(req.values))


def _requirement(req: Requirement) -> ColumnElement[bool]:
    """``req`` as SQL: over the built-in tag's expression, or ``EXISTS`` on ``device_tags``."""
    builtin = _builtin(req.key)
    if builtin is not None:
        return _builtin_requirement(req, builtin)
    return _user_requirement(req)


def _user_requirement(req: Requirement) -> ColumnElement[bool]:
    """``req`` over the user tags: ``EXISTS``/``NOT EXISTS`` on ``device_tags``."""
    match req:
        case Exists():
            return _has_tag(req.key, None)
        case NotExists():
            return not_(_has_tag(req.key, None))
        case Equals():
            return _has_tag(req.key, (req.value,))
        case NotEquals():
            return not_(_has_tag(req.key, (req.value,)))
        case In():
            return _has_tag(req.key, req.values)
        case NotIn():
            return not_(_has_tag(req.key, req.values))


def selector_clause(selector: Selector) -> ColumnElement[bool]:
    """The ``WHERE`` (over ``devices``) of the devices ``selector`` selects."""
    if not selector.requirements:
        return true()
    return and_(*(_requirement(req) for req in selector.requirements))


# -- tags -------------------------------------------------------------------------------

_LOCK = select(devices.c.id).where(devices.c.id == bindparam("device_id")).with_for_update()
_OF_DEVICE = select(device_tags.c.key, device_tags.c.value).where(
    device_tags.c.device_id == bindparam("device_id")
)
_OF_DEVICE_HOT = HotRead(_OF_DEVICE, tuple)  # `GET /devices/{id}`'s second read
_DELETE_ALL = delete(device_tags).where(device_tags.c.device_id == bindparam("device_id"))
_DELETE_KEYS = delete(device_tags).where(
    device_tags.c.device_id == bindparam("device_id"),
    device_tags.c.key.in_(bindparam("keys", expanding=True)),
)
_TOUCH = (
    update(devices)
    .where(devices.c.id == bindparam("device_id"))
    .values(updated_at=bindparam("now"))
)


@cache
def _upsert(dialect: str) -> Insert:
    """``INSERT … ON CONFLICT (device_id, key) DO UPDATE SET value`` for ``dialect``."""
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = make(device_tags)
    return stmt.on_conflict_do_update(
        index_elements=[device_tags.c.device_id, device_tags.c.key],
        set_={"value": stmt.excluded.value},
    )


async def lock_device(conn: AsyncConnection, device_id: uuid.UUID) -> None:
    """Lock the device's row until the transaction ends (PostgreSQL ``FOR UPDATE``; SQLite
    has one writer anyway): two tag changes of one device do not interleave."""
    await conn.execute(_LOCK, {"device_id": device_id})


async def tags_of_device(
    source: Database | AsyncConnection, device_id: uuid.UUID
) -> dict[str, str]:
    """The user tags of one device (built-ins aside); a hot read given the :class:`Database`."""
    return dict(await _OF_DEVICE_HOT.all(source, device_id=device_id))


async def tags_of(
    conn: AsyncConnection, device_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, dict[str, str]]:
    """The user tags of each of ``device_ids`` in one query (a device without any: absent)."""
    ids = list(dict.fromkeys(device_ids))
    if not ids:
        return {}
    stmt = select(device_tags.c.device_id, device_tags.c.key, device_tags.c.value).where(
        device_tags.c.device_id.in_(ids)
    )
    found: dict[uuid.UUID, dict[str, str]] = {}
    for device_id, key, value in await conn.execute(stmt):
        found.setdefault(device_id, {})[key] = value
    return found


async def write_changes(
    conn: AsyncConnection,
    device_id: uuid.UUID,
    *,
    upsert: Mapping[str, str],
    remove: Iterable[str],
    now: datetime,
) -> None:
    """Delete the tags ``remove``, insert or update ``upsert``, and touch ``updated_at``."""
    keys = list(remove)
    if keys:
        await conn.execute(_DELETE_KEYS, {"device_id": device_id, "keys": keys})
    if upsert:
        rows = [{"device_id": device_id, "key": k, "value": v} for k, v in upsert.items()]
        await conn.execute(_upsert(conn.dialect.name), rows)
    await conn.execute(_TOUCH, {"device_id": device_id, "now": now})


async def delete_all(conn: AsyncConnection, device_id: uuid.UUID) -> None:
    """Delete every user tag of the device."""
    await conn.execute(_DELETE_ALL, {"device_id": device_id})


# -- the model a device runs ----------------------------------------------------------------

_model_changes = or_(
    devices.c.current_model_id.is_(None),
    devices.c.current_model_id != bindparam("model_id"),
    devices.c.current_model_sha256.is_(None),
    devices.c.current_model_sha256 != bindparam("sha256"),
)
# SET expressions read the row as it was: the old current model becomes the previous one.
_SET_CURRENT = (
    update(devices)
    .where(devices.c.id == bindparam("device_id"), _model_changes)
    .values(
        previous_model_id=devices.c.current_model_id,
        previous_model_sha256=devices.c.current_model_sha256,
        current_model_id=bindparam("model_id"),
        current_model_sha256=bindparam("sha256"),
        updated_at=bindparam("now"),
    )
    .returning(devices.c.id)
)


async def set_current_model(
    conn: AsyncConnection, device_id: uuid.UUID, model_id: uuid.UUID, sha256: str, now: datetime
) -> bool:
    """Record that the device runs ``model_id`` (``sha256``) now; the model it ran before
    becomes its previous one. Nothing changes (False) when it already ran exactly this."""
    params = {"device_id": device_id, "model_id": model_id, "sha256": sha256, "now": now}
    return (await conn.execute(_SET_CURRENT, params)).one_or_none() is not None
