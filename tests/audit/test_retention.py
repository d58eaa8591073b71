"""Retention: expired events are deleted in bounded batches, each its own transaction;
the server's pruner runs at start-up. On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.support.audit import stored_events
from tests.support.devices import runtime
from tests.support.tunnel import wait_for
from visiona.audit import repository
from visiona.audit.dependencies import PRUNER
from visiona.audit.retention import Pruner, prune
from visiona.kit.database import Database
from visiona.kit.schema import organizations, webhook_deliveries, webhook_endpoints


class CountingDatabase(Database):
    """The real database, counting the transactions opened through it."""

    def __init__(self, db: Database) -> None:
        super().__init__(db.engine, db.target)
        self.transactions = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        self.transactions += 1
        async with super().transaction() as conn:
            yield conn


async def _insert(app: FastAPI, owner: uuid.UUID, *ages_in_days: float) -> None:
    now = datetime.now(UTC)
    async with runtime(app).db.transaction() as conn:
        for age in ages_in_days:
            await repository.insert_event(
                conn,
                {
                    "id": uuid.uuid4(),
                    "occurred_at": now - timedelta(days=age),
                    "owner_id": owner,
                    "actor_type": "system",
                    "actor_id": None,
                    "action": "tunnel.disconnected",
                    "target_type": "device",
                    "target_id": str(owner),
                    "device_id": None,
                    "client_addr": None,
                    "request_id": None,
                    "detail": {"age": age},
                },
            )


async def test_prune_deletes_only_expired_events_in_bounded_batches(app: FastAPI) -> None:
    owner = uuid.uuid4()
    await _insert(app, owner, *[31 + n for n in range(7)], 29, 1)
    db = CountingDatabase(runtime(app).db)
    deleted = await prune(db, 30, batch=3)
    assert deleted == 7
    # 3 + 3 + 1: the last, short batch ends it; then one (empty) batch of the outbox
    assert db.transactions == 4
    left = await stored_events(app, owner_id=owner)
    assert sorted(event.detail["age"] for event in left) == [1, 29]
    assert await prune(db, 30, batch=3) == 0  # nothing left: one empty batch of each
    assert db.transactions == 6


async def test_prune_ages_out_finished_deliveries_but_never_a_pending_one(app: FastAPI) -> None:
    now = datetime.now(UTC)
    endpoint = uuid.uuid4()
    async with runtime(app).db.transaction() as conn:
        org = uuid.uuid4()
        await conn.execute(insert(organizations).values(id=org, name="o", personal=False))
        await conn.execute(
            insert(webhook_endpoints).values(
                id=endpoint, org_id=org, url="https://h.example.com/", secret="s", events="*"
            )
        )
        for state, age in (("delivered", 40), ("failed", 40), ("pending", 40), ("delivered", 2)):
            at = now - timedelta(days=age)
            await conn.execute(
                insert(webhook_deliveries).values(
                    endpoint_id=endpoint,
                    event_id=uuid.uuid4(),
                    event_type="model.renamed",
                    payload={"state": state, "age": age},
                    state=state,
                    next_attempt_at=at,
                    created_at=at,
                )
            )
    await prune(runtime(app).db, 30, batch=1)
    async with runtime(app).db.transaction() as conn:
        rows = (await conn.execute(select(webhook_deliveries.c.payload))).scalars().all()
    assert sorted((r["state"], r["age"]) for r in rows) == [("delivered", 2), ("pending", 40)]


async def test_the_servers_pruner_runs_at_start_and_uses_the_retention(app: FastAPI) -> None:
    owner = uuid.uuid4()
    await _insert(app, owner, 400, 10)
    pruner = Pruner(runtime(app).db, retention_days=365, interval=3600)
    pruner.start()
    try:
        await wait_for(_ran(pruner))
    finally:
        await pruner.stop()
    assert [event.detail["age"] for event in await stored_events(app, owner_id=owner)] == [10]


def _ran(pruner: Pruner) -> Callable[[], Awaitable[bool]]:
    async def done() -> bool:
        return pruner.runs >= 1

    return done


async def test_the_app_starts_and_stops_its_pruner(app: FastAPI) -> None:
    pruner = PRUNER.of(app)
    await wait_for(_ran(pruner))
