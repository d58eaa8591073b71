"""Tunnel status changes: written in batches, kept and retried when the database is
busy, and guarded by the tunnel's epoch so an old tunnel's late write never wins."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, func, select, update

from tests.support.api import signup
from tests.support.tunnel import paired_agent_token
from visiona.audit import service as audit
from visiona.kit.clock import utcnow
from visiona.kit.database import Database
from visiona.kit.runtime import Runtime
from visiona.kit.schema import audit_events, devices
from visiona.kit.settings import Settings
from visiona.tunnel import repository, statuswriter
from visiona.tunnel.statuswriter import StatusChange, StatusWriter


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A database that gives up quickly on a lock held elsewhere."""
    return settings.model_copy(update={"db_command_timeout": 1.0, "sqlite_busy_timeout_ms": 200})


def _runtime(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def _online(device_id: uuid.UUID, epoch: int) -> StatusChange:
    event_row = audit.event_values(
        "tunnel.connected",
        actor=audit.Actor.device(device_id),
        org_id=None,
        target_id=device_id,
        device_id=device_id,
        detail={"session_token_id": "x", "node": None},
    )
    return StatusChange(device_id, epoch, "online", at=utcnow(), event=event_row)


async def _status(db: Database, device_id: uuid.UUID) -> str:
    async with db.reading() as conn:
        value = await conn.scalar(select(devices.c.remote_status).where(devices.c.id == device_id))
    return str(value)


async def _devices(client: httpx.AsyncClient, count: int) -> list[uuid.UUID]:
    user = await signup(client)
    return [uuid.UUID((await paired_agent_token(client, user))[0]) for _ in range(count)]


async def test_a_batch_the_busy_database_refused_is_kept_and_written_whole_later(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    ids = await _devices(client, 5)
    db = _runtime(app).db
    writer = StatusWriter(db, 0.05)
    for epoch, device_id in enumerate(ids, start=1):
        writer.put(_online(device_id, epoch))
    other = Database(settings.build_engine(), settings.database_target)
    try:
        async with other.transaction() as conn:  # another writer holds the devices
            await conn.execute(update(devices).values(name=devices.c.name))
            assert await writer.write_once() is False
            assert writer.backlog == 5  # kept, nothing dropped
    finally:
        await other.dispose()
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        statements.append(sql.split(maxsplit=1)[0].upper())

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert await writer.write_once() is True
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert writer.backlog == 0
    assert (writer.failed, writer.batches) == (1, 1)
    # one executemany for the five statuses, one for the five events
    assert statements.count("UPDATE") == 1
    assert statements.count("INSERT") == 1
    for device_id in ids:
        assert await _status(db, device_id) == "online"
    async with db.reading() as conn:
        written = await conn.scalar(
            select(func.count())
            .select_from(audit_events)
            .where(audit_events.c.action == "tunnel.connected", audit_events.c.device_id.in_(ids))
        )
    assert written == 5


async def test_an_old_tunnels_late_writes_never_overwrite_a_newer_tunnels_status(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    (device_id,) = await _devices(client, 1)
    db = _runtime(app).db
    old, new = 1_000, 2_000
    async with db.transaction() as conn:
        await repository.mark_connected(conn, [(device_id, new, utcnow(), False)])
        # the old tunnel's writes arrive late: each misses
        await repository.mark_connected(conn, [(device_id, old, utcnow(), False)])
        await repository.set_remote_status(conn, [(device_id, old, "offline")])
        await repository.set_remote_status(conn, [(device_id, old, "reconnecting")])
    assert await _status(db, device_id) == "online"
    async with db.reading() as conn:
        kept = await conn.scalar(select(devices.c.tunnel_epoch).where(devices.c.id == device_id))
    assert kept == new
    async with db.transaction() as conn:  # the new tunnel's own end applies
        await repository.set_remote_status(conn, [(device_id, new, "offline")])
    assert await _status(db, device_id) == "offline"
    async with db.transaction() as conn:  # a seen batch of the old tunnel misses too
        await repository.mark_seen(conn, {device_id: old}, utcnow())
    assert await _status(db, device_id) == "offline"


async def test_in_one_batch_online_of_the_newer_tunnel_wins_over_the_older_ones_end(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    (device_id,) = await _devices(client, 1)
    db = _runtime(app).db
    writer = StatusWriter(db, 0.05)
    writer.put(_online(device_id, 10))
    writer.put(_online(device_id, 20))  # the agent reconnected before the old end was seen
    writer.put(StatusChange(device_id, 10, "offline"))
    assert await writer.write_once() is True
    assert await _status(db, device_id) == "online"


async def test_a_queue_longer_than_a_batch_is_written_in_bounded_batches_one_after_another(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statuswriter, "MAX_BATCH", 2)
    ids = await _devices(client, 5)
    db = _runtime(app).db
    writer = StatusWriter(db, 0.05)
    updates: list[int] = []

    def count(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        if sql.lstrip().upper().startswith("UPDATE"):
            updates.append(len(params) if isinstance(params, list) else 1)

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    writer.start()
    try:
        for epoch, device_id in enumerate(ids, start=1):
            writer.put(_online(device_id, epoch))
        async with asyncio.timeout(30):
            while writer.backlog or writer.batches < 3:  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.01)
    finally:
        await writer.close()
        event.remove(engine, "before_cursor_execute", count)
    assert writer.batches == 3  # 2 + 2 + 1, without waiting an interval between them
    assert max(updates) <= 2
    for device_id in ids:
        assert await _status(db, device_id) == "online"


async def test_closing_while_a_batch_is_written_waits_for_it_and_writes_each_event_once(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await _devices(client, 4)
    db = _runtime(app).db
    writer = StatusWriter(db, 0.01)
    entered, release = asyncio.Event(), asyncio.Event()
    real = db.transaction

    @contextlib.asynccontextmanager
    async def slow_to_return(*args: Any) -> AsyncIterator[Any]:
        async with real(*args) as conn:
            yield conn
        entered.set()  # committed; the writer has not heard back yet
        await release.wait()

    monkeypatch.setattr(db, "transaction", slow_to_return)
    writer.start()
    for epoch, device_id in enumerate(ids[:2], start=1):
        writer.put(_online(device_id, epoch))
    await asyncio.wait_for(entered.wait(), 30)
    for epoch, device_id in enumerate(ids[2:], start=3):
        writer.put(_online(device_id, epoch))  # left for the close to write
    closing = asyncio.create_task(writer.close())
    await asyncio.sleep(0.1)
    assert not closing.done()  # it waits for the batch in flight
    release.set()
    await asyncio.wait_for(closing, 30)
    assert writer.backlog == 0
    assert writer.failed == 0  # no batch written twice (its event ids refused)
    async with db.reading() as conn:
        written = await conn.scalar(
            select(func.count())
            .select_from(audit_events)
            .where(audit_events.c.action == "tunnel.connected", audit_events.c.device_id.in_(ids))
        )
    assert written == 4


async def test_a_seen_batch_marks_every_device_of_its_epochs_and_no_other(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ids = await _devices(client, 4)
    db = _runtime(app).db
    epochs = {device_id: 3_000 + n for n, device_id in enumerate(ids)}
    async with db.transaction() as conn:
        await repository.mark_connected(
            conn, [(device_id, epoch, utcnow(), False) for device_id, epoch in epochs.items()]
        )
        await repository.set_remote_status(
            conn, [(device_id, epoch, "reconnecting") for device_id, epoch in epochs.items()]
        )
    seen_at = utcnow()
    batch = {device_id: epochs[device_id] for device_id in ids[:3]}
    async with db.transaction() as conn:
        await repository.mark_seen(conn, batch, seen_at)
    for device_id in ids[:3]:
        assert await _status(db, device_id) == "online"
    assert await _status(db, ids[3]) == "reconnecting"  # not in the batch
    async with db.reading() as conn:
        stamps = dict((await conn.execute(select(devices.c.id, devices.c.last_seen_at))).all())
    assert [stamps[device_id] == seen_at for device_id in ids] == [True, True, True, False]
