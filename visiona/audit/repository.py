"""SQL for the audit trail. Takes a connection; never commits.

Rows are appended with :func:`insert_event` on the caller's connection (so an event
commits or rolls back with the change it records), listed newest first with the
keyset cursor every list uses, and pruned in bounded batches by :func:`delete_before`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import outbox
from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.records import build, columns_of
from visiona.kit.schema import UTCDateTime, api_keys, audit_events, users


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit event as stored."""

    id: uuid.UUID
    occurred_at: datetime
    owner_id: uuid.UUID | None
    org_id: uuid.UUID | None
    actor_type: str
    actor_id: uuid.UUID | None
    action: str
    target_type: str
    target_id: str | None
    device_id: uuid.UUID | None
    client_addr: str | None
    request_id: str | None
    detail: dict[str, Any]
    #: the acting user's email and name (a user actor who still exists), for "who"
    actor_email: str | None = None
    actor_name: str | None = None


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a list shows (all conditions hold; None: no condition)."""

    org_id: uuid.UUID
    device_id: uuid.UUID | None = None
    action: str | None = None
    #: Any of these actions (a category of the console's Activity filter).
    actions: tuple[str, ...] | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


_EVENT = columns_of(
    AuditEvent,
    audit_events,
    actor_email=users.c.email,
    actor_name=func.coalesce(users.c.name, api_keys.c.name),
)
_WITH_ACTOR = audit_events.outerjoin(
    users, and_(audit_events.c.actor_type == "user", users.c.id == audit_events.c.actor_id)
).outerjoin(
    api_keys,
    and_(audit_events.c.actor_type == "api_key", api_keys.c.id == audit_events.c.actor_id),
)
#: Every event with its acting user's email and name (an API key: its name): select
#: ``EVENT_COLUMNS`` from ``EVENTS_WITH_ACTOR`` and build each row with :func:`event_of`.
EVENT_COLUMNS = _EVENT
EVENTS_WITH_ACTOR = _WITH_ACTOR
_event = build(AuditEvent)
event_of = _event
_ORDER = Keyset(audit_events.c.occurred_at, audit_events.c.id, descending=True, parse_key=uuid.UUID)
_INSERT = insert(audit_events)
_cutoff = bindparam("cutoff", type_=UTCDateTime())
# The ids of one batch of expired rows (the oldest first, on the occurred_at index).
_EXPIRED_BATCH = (
    select(audit_events.c.id)
    .where(audit_events.c.occurred_at < _cutoff)
    .order_by(audit_events.c.occurred_at)
    .limit(bindparam("batch"))
    .scalar_subquery()
)
_DELETE_BATCH = delete(audit_events).where(audit_events.c.id.in_(_EXPIRED_BATCH))


async def insert_event(conn: AsyncConnection, values: dict[str, Any]) -> None:
    """Append one event (``values`` has every column)."""
    await conn.execute(_INSERT, values)
    await outbox.enqueue(conn, [values])


async def insert_events(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Append many events in one executemany (each row has every column)."""
    await conn.execute(_INSERT, rows)
    await outbox.enqueue(conn, rows)


def _conditions(spec: EventFilter) -> list[ColumnElement[bool]]:
    c = audit_events.c
    found = [c.org_id == spec.org_id]
    if spec.device_id is not None:
        found.append(c.device_id == spec.device_id)
    if spec.action is not None:
        found.append(c.action == spec.action)
    if spec.actions is not None:
        found.append(c.action.in_(spec.actions))
    if spec.target_type is not None:
        found.append(c.target_type == spec.target_type)
    if spec.target_id is not None:
        found.append(c.target_id == spec.target_id)
    if spec.since is not None:
        found.append(c.occurred_at >= spec.since)
    if spec.until is not None:
        found.append(c.occurred_at < spec.until)
    return found


async def list_events(
    conn: AsyncConnection, spec: EventFilter, page: PageRequest
) -> Page[AuditEvent]:
    """One page of the events ``spec`` selects, newest first."""
    stmt = select(*_EVENT).select_from(_WITH_ACTOR).where(*_conditions(spec))
    return await paginate(conn, stmt, _ORDER, page, _event)


async def delete_before(conn: AsyncConnection, cutoff: datetime, batch: int) -> int:
    """Delete at most ``batch`` events older than ``cutoff`` (oldest first); how many."""
    result = await conn.execute(_DELETE_BATCH, {"cutoff": cutoff, "batch": batch})
    return int(result.rowcount)
