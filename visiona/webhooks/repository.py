"""SQL for webhook endpoints, their subscriptions and their delivery log.

Takes a connection; never commits. The delivery rows are written by the outbox
(:mod:`visiona.audit.outbox`) and sent by the dispatcher; this module reads them for the
delivery log and writes one for a test event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.pagination import (
    Keyset,
    Page,
    PageRequest,
    bad_cursor,
    decode_cursor,
    encode_cursor,
    paginate,
)
from visiona.kit.records import AnyRow
from visiona.kit.schema import webhook_deliveries, webhook_endpoints, webhook_subscriptions

_e = webhook_endpoints.c
_d = webhook_deliveries.c


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A webhook endpoint (its secret is read only where it is needed: never listed)."""

    id: uuid.UUID
    org_id: uuid.UUID
    url: str
    description: str | None
    events: tuple[str, ...]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of an event to an endpoint (a row of its delivery log)."""

    seq: int
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    state: str
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status: int | None
    last_latency_ms: int | None
    last_response: str | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


_ENDPOINT = select(
    _e.id,
    _e.org_id,
    _e.url,
    _e.description,
    _e.events,
    _e.enabled,
    _e.disabled_reason,
    _e.disabled_at,
    _e.failing_since,
    _e.created_at,
    _e.updated_at,
)
_ORDER = Keyset(_e.created_at, _e.id, descending=True, parse_key=uuid.UUID)
_DELIVERY = select(
    _d.seq,
    _d.endpoint_id,
    _d.event_id,
    _d.event_type,
    _d.payload,
    _d.state,
    _d.attempts,
    _d.next_attempt_at,
    _d.last_attempt_at,
    _d.last_status,
    _d.last_latency_ms,
    _d.last_response,
    _d.last_error,
    _d.delivered_at,
    _d.created_at,
)


def _endpoint(row: AnyRow) -> Endpoint:
    return Endpoint(
        id=row.id,
        org_id=row.org_id,
        url=row.url,
        description=row.description,
        events=tuple(row.events.split()),
        enabled=bool(row.enabled),
        disabled_reason=row.disabled_reason,
        disabled_at=row.disabled_at,
        failing_since=row.failing_since,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _delivery(row: AnyRow) -> Delivery:
    return Delivery(
        seq=int(row.seq),
        endpoint_id=row.endpoint_id,
        event_id=row.event_id,
        event_type=row.event_type,
        payload=dict(row.payload or {}),
        state=row.state,
        attempts=int(row.attempts),
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        last_status=None if row.last_status is None else int(row.last_status),
        last_latency_ms=None if row.last_latency_ms is None else int(row.last_latency_ms),
        last_response=row.last_response,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
        created_at=row.created_at,
    )


async def count_endpoints(conn: AsyncConnection, org_id: uuid.UUID) -> int:
    """How many endpoints ``org_id`` has."""
    stmt = select(func.count()).select_from(webhook_endpoints).where(_e.org_id == org_id)
    return int((await conn.execute(stmt)).scalar_one())


async def insert_endpoint(
    conn: AsyncConnection,
    *,
    endpoint_id: uuid.UUID,
    org_id: uuid.UUID,
    created_by: uuid.UUID | None,
    url: str,
    description: str | None,
    secret: str,
    events: tuple[str, ...],
    now: datetime,
) -> Endpoint:
    """Store an endpoint and its subscriptions (``events``: sorted, distinct)."""
    await conn.execute(
        insert(webhook_endpoints),
        {
            "id": endpoint_id,
            "org_id": org_id,
            "created_by": created_by,
            "url": url,
            "description": description,
            "secret": secret,
            "events": " ".join(events),
            "enabled": True,
            "created_at": now,
            "updated_at": now,
        },
    )
    await _subscribe(conn, endpoint_id, events)
    return Endpoint(
        endpoint_id, org_id, url, description, events, enabled=True, disabled_reason=None,
        disabled_at=None, failing_since=None, created_at=now, updated_at=now,
    )  # fmt: skip


async def _subscribe(
    conn: AsyncConnection, endpoint_id: uuid.UUID, events: tuple[str, ...]
) -> None:
    rows = [{"endpoint_id": endpoint_id, "event_type": event} for event in events]
    await conn.execute(insert(webhook_subscriptions), rows)


async def list_endpoints(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> Page[Endpoint]:
    """The organisation's endpoints, newest first."""
    return await paginate(conn, _ENDPOINT.where(_e.org_id == org_id), _ORDER, page, _endpoint)


async def get_endpoint(
    conn: AsyncConnection, org_id: uuid.UUID, endpoint_id: uuid.UUID, *, lock: bool = False
) -> Endpoint | None:
    """The endpoint ``endpoint_id`` of ``org_id`` (another organisation's: None).

    ``lock`` holds its row until the transaction ends (PostgreSQL; SQLite's writer lock
    serialises anyway), so concurrent edits of one endpoint apply one after the other.
    """
    stmt = _ENDPOINT.where(_e.org_id == org_id, _e.id == endpoint_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return None if row is None else _endpoint(row)


async def update_endpoint(
    conn: AsyncConnection,
    endpoint_id: uuid.UUID,
    values: dict[str, Any],
    *,
    events: tuple[str, ...] | None,
) -> None:
    """Write ``values`` (columns) of the endpoint; new subscriptions when ``events``."""
    if events is not None:
        values = {**values, "events": " ".join(events)}
        await conn.execute(
            delete(webhook_subscriptions).where(webhook_subscriptions.c.endpoint_id == endpoint_id)
        )
        await _subscribe(conn, endpoint_id, events)
    await conn.execute(update(webhook_endpoints).where(_e.id == endpoint_id).values(**values))


async def delete_endpoint(conn: AsyncConnection, endpoint_id: uuid.UUID) -> None:
    """Delete the endpoint, its subscriptions and its deliveries.

    The foreign keys cascade (SQLite runs with ``foreign_keys=ON``); the explicit
    deletes keep it so on a database where they would not.
    """
    await conn.execute(delete(webhook_deliveries).where(_d.endpoint_id == endpoint_id))
    await conn.execute(
        delete(webhook_subscriptions).where(webhook_subscriptions.c.endpoint_id == endpoint_id)
    )
    await conn.execute(delete(webhook_endpoints).where(_e.id == endpoint_id))


async def retry_pending_now(conn: AsyncConnection, endpoint_id: uuid.UUID, now: datetime) -> None:
    """Make the endpoint's pending deliveries due now (it was just enabled again)."""
    await conn.execute(
        update(webhook_deliveries)
        .where(_d.endpoint_id == endpoint_id, _d.state == "pending", _d.next_attempt_at > now)
        .values(next_attempt_at=now)
    )


async def insert_delivery(
    conn: AsyncConnection,
    *,
    endpoint_id: uuid.UUID,
    event_id: uuid.UUID,
    event_type: str,
    payload: dict[str, Any],
    now: datetime,
) -> int:
    """Queue one delivery for one endpoint, due now; its ``seq``."""
    done = await conn.execute(
        insert(webhook_deliveries)
        .values(
            endpoint_id=endpoint_id,
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        .returning(_d.seq)
    )
    return int(done.scalar_one())


async def list_deliveries(
    conn: AsyncConnection,
    endpoint_id: uuid.UUID,
    page: PageRequest,
    *,
    state: str | None = None,
) -> Page[Delivery]:
    """The endpoint's deliveries, newest first (``seq`` descending), of ``state`` if given.

    The cursor carries the last row's ``seq`` (in the common cursor format, so a
    cursor this server did not hand out is the usual 422).
    """
    stmt = _DELIVERY.where(_d.endpoint_id == endpoint_id)
    if state is not None:
        stmt = stmt.where(_d.state == state)
    position = decode_cursor(page.cursor)
    if position is not None:
        try:
            after = int(position.key)
        except ValueError as err:
            raise bad_cursor() from err
        stmt = stmt.where(_d.seq < after)
    stmt = stmt.order_by(_d.seq.desc()).limit(page.limit + 1)
    rows = (await conn.execute(stmt)).all()
    next_cursor = None
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        last = rows[-1]
        next_cursor = encode_cursor(last.created_at, str(last.seq))
    return Page(items=[_delivery(row) for row in rows], next_cursor=next_cursor)
