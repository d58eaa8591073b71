"""The membership cache: no query per request, and a change seen on every node within a
second (Redis pub/sub with PostgreSQL; a 1 s lifetime without Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import event

from tests.support.api import signup
from tests.support.devices import API, runtime
from tests.support.orgs import acting, create_org, member
from tests.support.settings import LIFESPAN_TIMEOUT
from visiona.app import create_app
from visiona.kit.settings import Settings
from visiona.orgs.access import LOCAL_TTL, TTL
from visiona.orgs.dependencies import MEMBERSHIPS


async def test_a_membership_is_read_once_not_per_request(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    viewer = await member(client, owner, team, "viewer")
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "memberships" in statement:
            statements.append(statement)

    engine = runtime(app).db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(5):
            response = await client.get(f"{API}/devices", headers=acting(viewer, team))
            assert response.status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) <= 1
    expected = TTL if runtime(app).redis is not None else LOCAL_TTL
    assert MEMBERSHIPS.of(app).ttl == expected


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_demotion_on_one_node_takes_effect_on_another_within_a_second(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    operator = await member(client, owner, team, "operator")
    other_node = create_app(settings)
    async with (
        LifespanManager(
            other_node, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
        ),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=other_node), base_url="http://b"
        ) as node_b,
    ):
        body = {"name": "d", "serial_number": f"SN-{uuid.uuid4().hex[:8]}"}
        made = await node_b.post(f"{API}/devices", json=body, headers=acting(operator, team))
        assert made.status_code == 201  # node B now holds the operator role in its cache
        demoted = await client.patch(
            f"{API}/orgs/{team}/members/{operator.id}",
            json={"role": "viewer"},
            headers=owner.headers,
        )
        assert demoted.status_code == 200
        started = time.monotonic()
        while True:
            body["serial_number"] += "x"
            tried = await node_b.post(f"{API}/devices", json=body, headers=acting(operator, team))
            if tried.status_code == 403:
                break
            assert time.monotonic() - started < 1.0, "node B still grants the old role"
            await asyncio.sleep(0.02)
