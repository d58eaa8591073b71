"""Reading the audit trail straight from the database, for assertions."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from tests.support.api import User
from tests.support.devices import API, runtime
from visiona.audit.repository import EVENT_COLUMNS, EVENTS_WITH_ACTOR, AuditEvent, event_of
from visiona.kit.schema import audit_events

#: Every action the helpers read back from the trail (API or database) in this run:
#: tests/audit/test_events.py checks the catalogue against it.
PRODUCED: set[str] = set()


async def stored_events(app: FastAPI, **where: Any) -> list[AuditEvent]:
    """Every stored event whose columns equal ``where``, oldest first."""
    stmt = select(*EVENT_COLUMNS).select_from(EVENTS_WITH_ACTOR)
    for name, value in where.items():
        stmt = stmt.where(audit_events.c[name] == value)
    stmt = stmt.order_by(audit_events.c.occurred_at, audit_events.c.id)
    async with runtime(app).db.reading() as conn:
        events = [event_of(row) for row in (await conn.execute(stmt)).all()]
    PRODUCED.update(event.action for event in events)
    return events


async def actions(app: FastAPI, **where: Any) -> list[str]:
    """The actions of the stored events ``where`` selects, oldest first."""
    return [event.action for event in await stored_events(app, **where)]


async def trail(client: httpx.AsyncClient, user: User, **params: Any) -> list[dict[str, Any]]:
    """The user's events, newest first (one page of 200), as the API returns them."""
    response = await client.get(
        f"{API}/audit-events", params={"limit": 200, **params}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    PRODUCED.update(item["action"] for item in items)
    return items


def only(items: list[dict[str, Any]], action: str) -> dict[str, Any]:
    """The one event of ``action`` among ``items``."""
    found = [item for item in items if item["action"] == action]
    assert len(found) == 1, (action, [item["action"] for item in items])
    return found[0]
