"""SQL of the event stream: reads of the audit trail. Takes a connection; never commits.

The tail reads the keys (``occurred_at``, ``id``) of the events that happened after an
instant, then the rows it has not seen yet; a resumed stream reads an organisation's
events after the last one its client saw. Every read is on ``idx_audit_events_occurred``
or ``idx_audit_events_org``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit.repository import EVENT_COLUMNS, EVENTS_WITH_ACTOR, AuditEvent, event_of
from visiona.kit.schema import audit_events

_C = audit_events.c
#: Event key: (occurred_at, id), the order every read here uses.
Key = tuple[datetime, uuid.UUID]


def _after(key: Key) -> ColumnElement[bool]:
    at, event_id = key
    return or_(_C.occurred_at > at, and_(_C.occurred_at == at, _C.id > event_id))


async def keys_since(
    conn: AsyncConnection, since: datetime, after: Key | None, limit: int
) -> list[Key]:
    """Up to ``limit`` keys of events that happened after ``since`` (and after the key
    ``after``, to page on), oldest first."""
    stmt = select(_C.occurred_at, _C.id).where(_C.occurred_at > since)
    if after is not None:
        stmt = stmt.where(_after(after))
    stmt = stmt.order_by(_C.occurred_at, _C.id).limit(limit)
    return [(row[0], row[1]) for row in await conn.execute(stmt)]


async def events_by_id(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> list[AuditEvent]:
    """The events with these ids (any order; a deleted one is missing)."""
    if not ids:
        return []
    stmt = select(*EVENT_COLUMNS).select_from(EVENTS_WITH_ACTOR).where(_C.id.in_(list(ids)))
    return [event_of(row) for row in await conn.execute(stmt)]


async def key_of(conn: AsyncConnection, org_id: uuid.UUID, event_id: uuid.UUID) -> Key | None:
    """The key of ``org_id``'s event ``event_id`` (None: no such event there)."""
    stmt = select(_C.occurred_at).where(_C.id == event_id, _C.org_id == org_id)
    at = (await conn.execute(stmt)).scalar_one_or_none()
    return None if at is None else (at, event_id)


async def org_events_after(
    conn: AsyncConnection, org_id: uuid.UUID, after: Key, limit: int
) -> list[AuditEvent]:
    """Up to ``limit`` of ``org_id``'s events after the key ``after``, oldest first."""
    stmt = (
        select(*EVENT_COLUMNS)
        .select_from(EVENTS_WITH_ACTOR)
        .where(_C.org_id == org_id, _C.occurred_at >= after[0], _after(after))
        .order_by(_C.occurred_at, _C.id)
        .limit(limit)
    )
    return [event_of(row) for row in await conn.execute(stmt)]
