"""The dispatcher of a running app delivers the outbox to a real receiver: in order per
endpoint, each event once, retried per the (shortened) schedule, and an endpoint whose
delivery exhausts the schedule is disabled and audited. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select, update
from starlette.applications import Starlette

from testkit.live import LiveServer, serve_app
from tests.support.api import signup
from tests.support.devices import runtime
from tests.support.receiver import Receiver, add_endpoint, deliveries, endpoint
from tests.support.tunnel import wait_for
from visiona.audit import service as audit
from visiona.audit.service import SYSTEM
from visiona.kit.clock import utcnow
from visiona.kit.schema import audit_events, webhook_deliveries
from visiona.kit.settings import Settings
from visiona.webhooks import queue
from visiona.webhooks.dispatcher import DISPATCHER
from visiona.webhooks.queue import EXHAUSTED_REASON
from visiona.webhooks.sender import Attempt

#: three attempts, 0.2 s apart
SCHEDULE = "0,0.2,0.2"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The backend's settings with a fast dispatcher allowed to reach loopback."""
    return settings.model_copy(
        update={
            "webhook_dispatcher": True,
            "webhook_allow_private": True,
            "webhook_retry_schedule": SCHEDULE,
            "webhook_poll_interval": 0.05,
            "webhook_timeout": 2.0,
            "webhook_connect_timeout": 1.0,
            "webhook_lease_seconds": 5.0,
        }
    )


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, LiveServer[Starlette]]]:
    """A receiver verifying every signature, on 127.0.0.1 (port 0)."""
    hooks = Receiver()
    async with serve_app(hooks.app()) as server:
        yield hooks, server


async def _events(app: FastAPI, org: uuid.UUID, count: int) -> list[str]:
    """``count`` model.renamed events of ``org``, each its own change; their ids in order."""
    ids = []
    for number in range(count):
        async with runtime(app).db.transaction() as conn:
            event = await audit.record(
                conn,
                "model.renamed",
                actor=SYSTEM,
                org_id=org,
                target_id=uuid.uuid4(),
                detail={"from": f"m{number}", "to": f"m{number + 1}"},
            )
        ids.append(str(event))
    return ids


async def test_every_event_reaches_the_receiver_signed_in_order_once(
    app: FastAPI, client: httpx.AsyncClient, receiver: tuple[Receiver, LiveServer[Starlette]]
) -> None:
    hooks, server = receiver
    db = runtime(app).db
    org = uuid.UUID((await signup(client)).org_id)
    path, secret = hooks.path()
    endpoint_id = await add_endpoint(db, org, f"{server.url}{path}", secret, ("model.*",))

    ids = await _events(app, org, 5)

    async def all_delivered() -> bool:
        return len(hooks.ids(path)) >= len(ids)

    await wait_for(all_delivered, limit=30)
    assert hooks.ids(path) == ids
    assert hooks.bad_signatures == 0
    assert [r.payload["type"] for r in hooks.log] == ["model.renamed"] * 5
    assert hooks.log[0].payload["data"]["detail"] == {"from": "m0", "to": "m1"}

    async def recorded() -> bool:
        rows = await deliveries(db, endpoint_id)
        return all(r["state"] == "delivered" for r in rows)

    await wait_for(recorded, limit=30)
    for row in await deliveries(db, endpoint_id):
        assert row["attempts"] == 1
        assert row["last_status"] == 200
        assert row["last_response"] == "ok"
        assert row["last_error"] is None
        assert row["lease_owner"] is None
        assert row["delivered_at"] is not None

    async def counted() -> bool:  # counted once its transaction is over
        return DISPATCHER.of(app).sent == 5

    await wait_for(counted, limit=30)


async def test_a_receiver_down_for_a_while_gets_everything_in_order_once_back(
    app: FastAPI, client: httpx.AsyncClient, receiver: tuple[Receiver, LiveServer[Starlette]]
) -> None:
    hooks, server = receiver
    db = runtime(app).db
    # long enough for the receiver to be down through several attempts
    DISPATCHER.of(app).schedule = (0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2)
    org = uuid.UUID((await signup(client)).org_id)
    path, secret = hooks.path()
    endpoint_id = await add_endpoint(db, org, f"{server.url}{path}", secret)
    hooks.status = 503

    ids = await _events(app, org, 4)

    async def retried() -> bool:
        return len(hooks.attempts) >= 3

    await wait_for(retried, limit=30)
    # only the head of line was tried: the later events wait behind it
    assert {event for _, event in hooks.attempts} == {ids[0]}
    row = (await deliveries(db, endpoint_id))[0]
    assert row["state"] == "pending"
    assert row["last_status"] == 503
    assert (await endpoint(db, endpoint_id))["failing_since"] is not None

    hooks.status = 200

    async def all_delivered() -> bool:
        return len(hooks.ids(path)) >= len(ids)

    await wait_for(all_delivered, limit=30)
    await asyncio.sleep(0.3)  # nothing more arrives
    assert hooks.ids(path) == ids  # in order, each once

    async def recorded() -> bool:
        rows = await deliveries(db, endpoint_id)
        return all(r["state"] == "delivered" for r in rows)

    await wait_for(recorded, limit=30)
    rows = await deliveries(db, endpoint_id)
    assert rows[0]["attempts"] >= 3
    assert [r["attempts"] for r in rows[1:]] == [1, 1, 1]
    assert (await endpoint(db, endpoint_id))["failing_since"] is None


async def test_an_exhausted_schedule_fails_the_delivery_and_disables_the_endpoint(
    app: FastAPI, client: httpx.AsyncClient, receiver: tuple[Receiver, LiveServer[Starlette]]
) -> None:
    hooks, server = receiver
    db = runtime(app).db
    org = uuid.UUID((await signup(client)).org_id)
    path, secret = hooks.path()
    endpoint_id = await add_endpoint(db, org, f"{server.url}{path}", secret, ("model.*",))
    hooks.status, hooks.answer = 500, b"boom"

    ids = await _events(app, org, 2)

    async def disabled() -> bool:
        return not (await endpoint(db, endpoint_id))["enabled"]

    await wait_for(disabled, limit=30)
    row = await endpoint(db, endpoint_id)
    assert row["disabled_reason"] == EXHAUSTED_REASON
    assert row["disabled_at"] is not None
    first, second = await deliveries(db, endpoint_id)
    assert first["state"] == "failed"
    assert first["attempts"] == 3  # the schedule's three attempts
    assert first["last_status"] == 500
    assert first["last_response"] == "boom"
    assert first["last_error"] == "answered 500"
    assert second["state"] == "pending"  # delivered once the endpoint is enabled again
    assert second["attempts"] == 0
    assert hooks.attempts == [(path, ids[0])] * 3
    async with db.reading() as conn:
        found = await conn.execute(
            select(audit_events).where(audit_events.c.action == "webhook.disabled")
        )
        [event] = list(found.mappings())
    assert event["actor_type"] == "system"
    assert event["org_id"] == org
    assert event["target_id"] == str(endpoint_id)
    assert event["detail"]["reason"] == EXHAUSTED_REASON
    assert event["detail"]["failing_since"] is not None

    async def counted() -> bool:
        return DISPATCHER.of(app).disabled == 1

    await wait_for(counted, limit=30)


async def test_an_outcome_is_not_recorded_once_the_lease_was_taken_by_another_claim(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A node that outlived its lease writes nothing: the row was claimed again."""
    await DISPATCHER.of(app).stop()
    db = runtime(app).db
    org = uuid.UUID((await signup(client)).org_id)
    endpoint_id = await add_endpoint(db, org, "http://127.0.0.1:9/x", "whsec_dGVzdA==")
    await _events(app, org, 1)
    now = utcnow()
    async with db.transaction() as conn:
        [first] = await queue.claim(conn, owner="node-a/1", now=now, lease=1.0, limit=10)
    later = now + timedelta(seconds=2)  # node-a's lease expired: node-b claims the row
    async with db.transaction() as conn:
        [second] = await queue.claim(conn, owner="node-b/1", now=later, lease=5.0, limit=10)
    assert second.seq == first.seq
    ok = Attempt(ok=True, attempted_at=later, latency_ms=1, status=200, response="ok")
    async with db.transaction() as conn:
        late = await queue.record(conn, first, ok, schedule=(0, 1), now=later)
        assert not late.recorded
        current = await queue.record(conn, second, ok, schedule=(0, 1), now=later)
        assert current.recorded
        assert current.state == "delivered"
    [row] = await deliveries(db, endpoint_id)
    assert row["state"] == "delivered"
    assert row["attempts"] == 1


async def test_a_claimed_head_of_line_holds_back_its_endpoint_and_no_other(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await DISPATCHER.of(app).stop()
    db = runtime(app).db
    org = uuid.UUID((await signup(client)).org_id)
    one = await add_endpoint(db, org, "http://127.0.0.1:9/one", "whsec_dGVzdA==")
    two = await add_endpoint(db, org, "http://127.0.0.1:9/two", "whsec_dGVzdA==")
    await _events(app, org, 3)
    now = utcnow()
    async with db.transaction() as conn:
        claimed = await queue.claim(conn, owner="n/1", now=now, lease=5.0, limit=10)
        again = await queue.claim(conn, owner="n/2", now=now, lease=5.0, limit=10)
    heads = {c.endpoint_id: c.seq for c in claimed}
    assert set(heads) == {one, two}  # one head per endpoint, not its later rows
    assert heads[one] == (await deliveries(db, one))[0]["seq"]
    assert again == []  # leased heads are not claimable, and nothing behind them is
    async with db.transaction() as conn:  # not due yet: not claimable either
        await conn.execute(
            update(webhook_deliveries).values(
                lease_owner=None, lease_until=None, next_attempt_at=now + timedelta(hours=1)
            )
        )
        assert not await queue.any_due(conn, now)


async def test_an_attempt_cut_by_shutdown_gives_its_lease_back(
    app: FastAPI, client: httpx.AsyncClient, receiver: tuple[Receiver, LiveServer[Starlette]]
) -> None:
    """Stopping a node cancels what is still in flight after the grace and gives the
    leases back: another node (or this one, restarted) attempts the rows again."""
    hooks, server = receiver
    hooks.delay = 1.5
    db = runtime(app).db
    org = uuid.UUID((await signup(client)).org_id)
    path, secret = hooks.path()
    endpoint_id = await add_endpoint(db, org, f"{server.url}{path}", secret)
    await _events(app, org, 1)

    async def in_flight() -> bool:
        return DISPATCHER.of(app).in_flight == 1 and len(hooks.attempts) == 1

    await wait_for(in_flight, limit=30)
    await DISPATCHER.of(app).stop(grace=0.1)
    [row] = await deliveries(db, endpoint_id)
    assert row["state"] == "pending"
    assert row["attempts"] == 0
    assert row["lease_owner"] is None
    assert row["lease_until"] is None


async def test_neither_the_secret_nor_the_url_path_and_query_are_logged(
    app: FastAPI,
    client: httpx.AsyncClient,
    receiver: tuple[Receiver, LiveServer[Starlette]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="visiona")
    hooks, server = receiver
    db = runtime(app).db
    org = uuid.UUID((await signup(client)).org_id)
    path, secret = hooks.path()
    url = f"{server.url}{path}?token=query-s3cret"
    endpoint_id = await add_endpoint(db, org, url, secret)
    hooks.status = 500
    await _events(app, org, 1)

    async def disabled() -> bool:
        return not (await endpoint(db, endpoint_id))["enabled"]

    await wait_for(disabled, limit=30)
    logged = caplog.text
    assert str(endpoint_id) in logged  # the failures and the disabling were logged
    assert secret not in logged
    assert secret.removeprefix("whsec_") not in logged
    assert "query-s3cret" not in logged
    assert path not in logged


async def test_a_receiver_refusing_connections_gets_everything_once_it_listens(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    db = runtime(app).db
    DISPATCHER.of(app).schedule = (0,) + (0.2,) * 30
    with socket.socket() as probe:  # a port nobody listens on (yet)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hooks = Receiver()
    path, secret = hooks.path()
    org = uuid.UUID((await signup(client)).org_id)
    endpoint_id = await add_endpoint(db, org, f"http://127.0.0.1:{port}{path}", secret)
    ids = await _events(app, org, 3)

    async def refused() -> bool:
        head = (await deliveries(db, endpoint_id))[0]
        return bool(head["attempts"] >= 2 and head["last_error"] == "connection refused")

    await wait_for(refused, limit=30)
    config = uvicorn.Config(
        hooks.app(), host="127.0.0.1", port=port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:

        async def all_delivered() -> bool:
            return len(hooks.ids(path)) >= len(ids)

        await wait_for(all_delivered, limit=30)
    finally:
        server.should_exit = True
        await serving
    assert hooks.ids(path) == ids


async def test_a_backlog_longer_than_a_chain_is_delivered_in_order_without_waiting_for_a_lease(
    app: FastAPI,
    client: httpx.AsyncClient,
    receiver: tuple[Receiver, LiveServer[Starlette]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task gives its slot back after CHAIN rows without holding the next one: the
    rest of the backlog goes out at the next turn, not after a lease expires."""
    monkeypatch.setattr("visiona.webhooks.dispatcher.CHAIN", 2)
    dispatcher = DISPATCHER.of(app)
    dispatcher._lease = 60.0
    hooks, server = receiver
    db = runtime(app).db
    org = uuid.UUID((await signup(client)).org_id)
    path, secret = hooks.path()
    endpoint_id = await add_endpoint(db, org, f"{server.url}{path}", secret)
    ids = await _events(app, org, 7)

    async def all_delivered() -> bool:
        return len(hooks.ids(path)) >= len(ids)

    await wait_for(all_delivered, limit=30)  # far less than the lease
    assert hooks.ids(path) == ids

    async def released() -> bool:
        rows = await deliveries(db, endpoint_id)
        return all(r["state"] == "delivered" and r["lease_owner"] is None for r in rows)

    await wait_for(released, limit=30)
