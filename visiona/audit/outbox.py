"""The webhook outbox: every audit event is queued for its organisation's endpoints.

:func:`enqueue` runs on the caller's connection, right after the event's own insert,
so a delivery row commits with the change it reports or rolls back with it: an event
is never announced for a change that did not happen, nor lost for one that did. One
``INSERT … SELECT`` per event matches the organisation's enabled endpoints whose
subscriptions name the action (``device.renamed``), its family (``device.*``) or
everything (``*``); an organisation with no endpoint pays one indexed read that finds
nothing. Delivery itself is :mod:`visiona.webhooks`' business.

The audit trail's retention (:mod:`visiona.audit.retention`) prunes the outbox's
finished rows (delivered or failed: the delivery log) with the events they report,
never a pending one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Text, Uuid, bindparam, delete, exists, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.schema import (
    Detail,
    UTCDateTime,
    webhook_deliveries,
    webhook_endpoints,
    webhook_subscriptions,
)

#: The subscription that matches every event.
EVERY_EVENT = "*"

_e = webhook_endpoints
_s = webhook_subscriptions
_SUBSCRIBED = exists(
    select(literal(1)).where(
        _s.c.endpoint_id == _e.c.id,
        _s.c.event_type.in_(
            [bindparam("event_type", type_=Text()), bindparam("family", type_=Text()), EVERY_EVENT]
        ),
    )
)
_ROWS = select(
    _e.c.id,
    bindparam("event_id", type_=Uuid()),
    bindparam("event_type_value", type_=Text()),
    bindparam("payload", type_=Detail),
    bindparam("created_at", type_=UTCDateTime()),
    bindparam("next_attempt_at", type_=UTCDateTime()),
).where(_e.c.org_id == bindparam("org_id", type_=Uuid()), _e.c.enabled, _SUBSCRIBED)
_ENQUEUE = insert(webhook_deliveries).from_select(
    ["endpoint_id", "event_id", "event_type", "payload", "created_at", "next_attempt_at"],
    _ROWS,
)


def family(event_type: str) -> str:
    """``device.*`` for ``device.renamed``: the family subscription that matches it."""
    head, _, _ = event_type.partition(".")
    return f"{head}.*"


def payload(values: Mapping[str, Any]) -> dict[str, Any]:
    """The webhook body of an audit event row (Standard Webhooks: type, timestamp, data)."""
    occurred: datetime = values["occurred_at"]
    device_id = values.get("device_id")
    actor_id = values.get("actor_id")
    target_id = values.get("target_id")
    return {
        "type": values["action"],
        "timestamp": occurred.isoformat().replace("+00:00", "Z"),
        "data": {
            "id": str(values["id"]),
            "org_id": str(values["org_id"]),
            "actor": {
                "type": values["actor_type"],
                "id": None if actor_id is None else str(actor_id),
            },
            "target": {"type": values["target_type"], "id": target_id},
            "device_id": None if device_id is None else str(device_id),
            "detail": dict(values.get("detail") or {}),
        },
    }


def _params(values: Mapping[str, Any]) -> dict[str, Any]:
    action: str = values["action"]
    occurred: datetime = values["occurred_at"]
    return {
        "org_id": values["org_id"],
        "event_type": action,
        "family": family(action),
        "event_id": values["id"],
        "event_type_value": action,
        "payload": payload(values),
        "created_at": occurred,
        "next_attempt_at": occurred,
    }


async def enqueue(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Queue the events ``rows`` (audit rows) for every endpoint subscribed to them."""
    params = [_params(row) for row in rows if row.get("org_id") is not None]
    if len(params) == 1:
        await conn.execute(_ENQUEUE, params[0])
    elif params:
        await conn.execute(_ENQUEUE, params)


_d = webhook_deliveries
# One batch of finished deliveries older than the cutoff, the oldest first.
_FINISHED_BATCH = (
    select(_d.c.seq)
    .where(_d.c.state != "pending", _d.c.created_at < bindparam("cutoff", type_=UTCDateTime()))
    .order_by(_d.c.seq)
    .limit(bindparam("batch", type_=BigInteger()))
    .scalar_subquery()
)
_PRUNE_BATCH = delete(_d).where(_d.c.seq.in_(_FINISHED_BATCH))


async def prune_batch(conn: AsyncConnection, cutoff: datetime, batch: int) -> int:
    """Delete up to ``batch`` delivered or failed deliveries queued before ``cutoff``
    (the delivery log ages out with the audit trail; pending rows are never touched)."""
    result = await conn.execute(_PRUNE_BATCH, {"cutoff": cutoff, "batch": batch})
    return int(result.rowcount or 0)
