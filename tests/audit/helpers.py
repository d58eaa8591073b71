"""Reading the audit trail straight from the database, for assertions."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from sqlalchemy import select

from tests.devices.helpers import runtime
from visiona.audit.repository import AuditEvent
from visiona.kit.records import build, columns_of
from visiona.kit.schema import audit_events

_event = build(AuditEvent)


async def stored_events(app: FastAPI, **where: Any) -> list[AuditEvent]:
    """Every stored event whose columns equal ``where``, oldest first."""
    stmt = select(*columns_of(AuditEvent, audit_events))
    for name, value in where.items():
        stmt = stmt.where(audit_events.c[name] == value)
    stmt = stmt.order_by(audit_events.c.occurred_at, audit_events.c.id)
    async with runtime(app).db.reading() as conn:
        return [_event(row) for row in (await conn.execute(stmt)).all()]


async def actions(app: FastAPI, **where: Any) -> list[str]:
    """The actions of the stored events ``where`` selects, oldest first."""
    return [event.action for event in await stored_events(app, **where)]
