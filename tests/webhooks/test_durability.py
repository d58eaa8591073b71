"""Nothing queued is lost, nothing is delivered twice beyond at-least-once: a server
SIGKILLed mid-retry delivers everything after its restart (real `visiona serve`
processes), and two nodes on one PostgreSQL database deliver each event exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

from testkit.live import serve_app, serve_in_thread
from tests.support.api import signup
from tests.support.devices import runtime
from tests.support.node import serve_process, sqlite_env
from tests.support.receiver import Receiver, add_endpoint, deliveries
from tests.support.settings import LIFESPAN_TIMEOUT, make_settings
from tests.support.tunnel import wait_for
from visiona.app import create_app
from visiona.audit import service as audit
from visiona.audit.service import SYSTEM
from visiona.kit import migrate
from visiona.kit.database import Database
from visiona.kit.schema import webhook_deliveries
from visiona.webhooks.dispatcher import DISPATCHER

API = "/api/v1"


def _database(url: str, tmp_path: Path) -> Database:
    settings = make_settings(database_url=url, data_dir=tmp_path)
    return Database(settings.build_engine(), settings.database_target, hot_connections=0)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A migrated database of ``backend`` for server processes: a SQLite file or the
    module's PostgreSQL database."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'visiona.db'}"
        migrate.upgrade(url)
        return url
    return str(request.getfixturevalue("pg_url"))


async def test_events_queued_when_the_server_is_killed_are_all_delivered_after_restart(
    database_url: str, tmp_path: Path
) -> None:
    url = database_url
    env = sqlite_env(
        tmp_path,
        database_url=url,
        webhook_allow_private="true",
        webhook_retry_schedule="0" + ",0.3" * 60,
        webhook_poll_interval="0.1",
        webhook_connect_timeout="1",
        webhook_timeout="1",
        webhook_lease_seconds="2",
    )
    hooks = Receiver(status=503)  # down when the server dies
    db = _database(url, tmp_path)
    try:
        # the receiver in its own thread: starting a server process blocks this loop
        with serve_in_thread(hooks.app()) as receiver:
            path, secret = hooks.path()
            with serve_process(env) as node:
                async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
                    user = await signup(http)
                    await add_endpoint(
                        db, uuid.UUID(user.org_id), receiver.url + path, secret, ("api_key.*",)
                    )
                    for number in range(5):
                        created = await http.post(
                            f"{API}/api-keys",
                            json={"name": f"key-{number}", "scopes": ["read"]},
                            headers=user.headers,
                        )
                        assert created.status_code == 201, created.text

                    async def retrying() -> bool:
                        return len(hooks.attempts) >= 2

                    await wait_for(retrying, limit=60)
                os.kill(node.proc.pid, signal.SIGKILL)  # mid-retry, the head still leased
                node.proc.wait(timeout=10)
            endpoint_rows = await _rows(db)
            assert [r["state"] for r in endpoint_rows] == ["pending"] * 5
            expected = [str(r["event_id"]) for r in endpoint_rows]
            hooks.status = 200

            with serve_process(env):

                async def all_delivered() -> bool:
                    return len(hooks.ids(path)) >= len(expected)

                await wait_for(all_delivered, limit=60)
                await asyncio.sleep(0.5)  # nothing more arrives
            assert hooks.ids(path) == expected  # all of them, in order, each once
            assert hooks.bad_signatures == 0
            assert {event for _, event in hooks.attempts[:2]} == {expected[0]}
    finally:
        await db.dispose()


async def _rows(db: Database) -> list[dict[str, object]]:
    async with db.reading() as conn:
        found = await conn.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.seq))
        return [dict(r) for r in found.mappings()]


async def test_two_nodes_on_one_postgresql_database_deliver_each_event_exactly_once(
    pg_url: str, tmp_path: Path
) -> None:
    hooks = Receiver(delay=0.005)
    knobs = {
        "database_url": pg_url,
        "data_dir": tmp_path,
        "redis_url": None,
        "webhook_dispatcher": True,
        "webhook_allow_private": True,
        "webhook_poll_interval": 0.02,
        "webhook_concurrency": 4,
        "webhook_timeout": 5.0,
        "webhook_lease_seconds": 10.0,
    }
    a = create_app(make_settings(node_id="node-a", **knobs))
    b = create_app(make_settings(node_id="node-b", **knobs))
    async with (
        serve_app(hooks.app()) as receiver,
        LifespanManager(a, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT),
        LifespanManager(b, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://a") as http,
    ):
        db = runtime(a).db  # the same database as node b
        org = uuid.UUID((await signup(http)).org_id)
        paths = []
        for _ in range(4):
            path, secret = hooks.path()
            paths.append((path, await add_endpoint(db, org, receiver.url + path, secret)))
        for batch in range(6):  # queued while both nodes deliver
            rows = [
                audit.event_values(
                    "model.renamed",
                    actor=SYSTEM,
                    org_id=org,
                    target_id=uuid.uuid4(),
                    detail={"to": f"m{batch}.{n}"},
                )
                for n in range(5)
            ]
            async with db.transaction() as conn:
                await audit.record_prepared(conn, rows)
            await asyncio.sleep(0.05)
        total = 6 * 5 * len(paths)

        async def all_delivered() -> bool:
            return len(hooks.log) >= total

        await wait_for(all_delivered, limit=60)
        await asyncio.sleep(0.5)  # nothing more arrives
        sent = DISPATCHER.of(a).sent, DISPATCHER.of(b).sent
        for path, endpoint_id in paths:
            expected = [str(r["event_id"]) for r in await deliveries(db, endpoint_id)]
            assert hooks.ids(path) == expected  # in order, each exactly once
    assert len(hooks.log) == total
    assert max(Counter((r.path, r.event_id) for r in hooks.log).values()) == 1
    assert sum(sent) == total, sent
    assert hooks.bad_signatures == 0
