"""Dependencies going away at run time: 503 with the right code, then recovery by itself.

These tests own their PostgreSQL and Redis servers, so stopping them disturbs no
other test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from testkit.servers import PostgresServer, RedisServer
from tests.support.api import error_code, signup
from tests.support.settings import LIFESPAN_TIMEOUT, make_settings
from visiona.app import create_app
from visiona.kit import migrate


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
async def http(
    own_postgres: PostgresServer, own_redis: RedisServer
) -> AsyncIterator[httpx.AsyncClient]:
    url = own_postgres.url("postgres")
    await asyncio.to_thread(migrate.upgrade, url)
    settings = make_settings(
        database_url=url,
        redis_url=own_redis.url,
        db_connect_timeout=2,
        db_pool_timeout=2,
        redis_connect_timeout=1,
        redis_socket_timeout=1,
    )
    app = create_app(settings)
    async with LifespanManager(
        app, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
    ):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def _eventually(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> int:
    """Retry for a few seconds until the request stops failing with 503."""
    status = 0
    for _ in range(50):
        status = (await client.request(method, url, **kw)).status_code
        if status != 503:
            return status
        await asyncio.sleep(0.1)
    return status


async def test_postgres_down_is_503_and_recovers(
    http: httpx.AsyncClient, own_postgres: PostgresServer
) -> None:
    user = await signup(http)
    assert (await http.get("/api/v1/auth/me", headers=user.headers)).status_code == 200

    await asyncio.to_thread(own_postgres.stop)
    try:
        down = await http.get("/api/v1/auth/me", headers=user.headers)
        assert down.status_code == 503
        assert error_code(down) == "database_unavailable"
        assert "asyncpg" not in down.text
        health = await http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["checks"]["database"] == "unavailable"
        assert health.json()["checks"]["session_store"] == "ok"
    finally:
        await asyncio.to_thread(own_postgres.start)

    assert await _eventually(http, "GET", "/api/v1/auth/me", headers=user.headers) == 200
    assert (await http.get("/healthz")).status_code == 200


async def test_redis_down_is_503_and_recovers(
    http: httpx.AsyncClient, own_redis: RedisServer
) -> None:
    user = await signup(http)
    await asyncio.to_thread(own_redis.stop)
    try:
        down = await http.get("/api/v1/auth/me", headers=user.headers)
        assert down.status_code == 503
        assert error_code(down) == "session_store_unavailable"
        login = await http.post(
            "/api/v1/auth/login", json={"email": user.email, "password": "whatever1"}
        )
        assert login.status_code == 503
        health = await http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["checks"]["session_store"] == "unavailable"
        metrics = (await http.get("/metrics")).text
        assert "visiona_session_store_errors_total 0.0" not in metrics
    finally:
        await asyncio.to_thread(own_redis.start)

    # Redis keeps nothing on disk: the old session is gone, a new login works.
    again = await signup(http)
    assert await _eventually(http, "GET", "/api/v1/auth/me", headers=again.headers) == 200


#: Terminates the server's connections and waits (up to 10 s each) until each backend
#: has exited: its goodbye has then been written to the pooled connection's socket.
_TERMINATE = (
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
    "WHERE application_name = 'visiona' AND pid <> pg_backend_pid()"
)


async def test_pooled_connections_killed_by_the_server_are_replaced_transparently(
    http: httpx.AsyncClient, own_postgres: PostgresServer
) -> None:
    # No pre-ping: the pool hands out connections without a round trip, so a pooled
    # connection the server terminated must be noticed at checkout and replaced.
    user = await signup(http)
    assert (await http.get("/api/v1/auth/me", headers=user.headers)).status_code == 200
    killed = await asyncio.to_thread(own_postgres.psql, _TERMINATE)
    assert int(killed) >= 1

    read = await http.get("/api/v1/auth/me", headers=user.headers)
    assert read.status_code == 200, read.text

    assert int(await asyncio.to_thread(own_postgres.psql, _TERMINATE)) >= 1
    write = await http.post(
        "/api/v1/devices",
        json={"name": "after kill", "device_type": "kl520", "serial_number": "kill-1"},
        headers=user.headers,
    )
    assert write.status_code == 201, write.text


async def _device_of(http: httpx.AsyncClient, headers: dict[str, str], serial: str) -> str:
    created = await http.post(
        "/api/v1/devices",
        json={"name": "hot", "device_type": "kl520", "serial_number": serial},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def test_hot_reads_survive_killed_lane_connections(
    http: httpx.AsyncClient, own_postgres: PostgresServer
) -> None:
    # GET /devices/{id} and /healthz run on the hot-read lane's driver connections
    # (visiona/kit/hotread.py): killed by the server, they are replaced or retried.
    user = await signup(http)
    device_id = await _device_of(http, user.headers, "hot-kill-1")
    assert (await http.get(f"/api/v1/devices/{device_id}", headers=user.headers)).is_success
    assert (await http.get("/healthz")).status_code == 200
    assert int(await asyncio.to_thread(own_postgres.psql, _TERMINATE)) >= 1

    read = await http.get(f"/api/v1/devices/{device_id}", headers=user.headers)
    assert read.status_code == 200, read.text
    assert read.json()["id"] == device_id
    assert (await http.get("/healthz")).status_code == 200


async def test_hot_reads_with_postgres_down_are_503_and_recover(
    http: httpx.AsyncClient, own_postgres: PostgresServer
) -> None:
    user = await signup(http)
    device_id = await _device_of(http, user.headers, "hot-down-1")
    url = f"/api/v1/devices/{device_id}"
    assert (await http.get(url, headers=user.headers)).status_code == 200

    await asyncio.to_thread(own_postgres.stop)
    try:
        down = await http.get(url, headers=user.headers)  # the web session is in Redis
        assert down.status_code == 503
        assert error_code(down) == "database_unavailable"
        assert "asyncpg" not in down.text
    finally:
        await asyncio.to_thread(own_postgres.start)

    assert await _eventually(http, "GET", url, headers=user.headers) == 200
