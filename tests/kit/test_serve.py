"""The server as ``visiona serve`` runs it (uvicorn with :func:`server_config`), on loopback.

Request heads are bounded (431), a stalled body is cut off (408) without holding a
database connection, and forwarding headers are trusted only from configured proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from testkit.live import LiveServer, serve_app
from tests.support.api import PASSWORD, signup
from visiona.app import create_app
from visiona.kit import serve
from visiona.kit.listen import bind_socket
from visiona.kit.runtime import Runtime
from visiona.kit.settings import Settings


async def _exchange(port: int, request: bytes, *, pause: float = 0.0) -> bytes:
    """Send ``request`` (then wait ``pause``) and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:

        async def send() -> None:
            with contextlib.suppress(ConnectionError):
                writer.write(request)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            data = await asyncio.wait_for(reader.read(), timeout=30)
        except ConnectionError:
            data = b""
        await asyncio.gather(sender, return_exceptions=True)
        return data
    finally:
        writer.close()


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def _error(data: bytes) -> dict[str, str]:
    body = data.partition(b"\r\n\r\n")[2]
    error: dict[str, str] = json.loads(body)["error"]
    return error


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "max_header_bytes": 8 * 1024,
            "max_headers": 20,
            "body_read_timeout": 0.5,
        }
    )


class _BodyWait:
    """ASGI middleware: sets ``waiting`` when an app asks for body bytes a second time.

    The stalled-body test sends a head and one byte of the body: the second read is the
    one the server waits on, so the event marks "the request is stalled in its body".
    """

    def __init__(self, app: ASGIApp, waiting: asyncio.Event) -> None:
        self.app = app
        self.waiting = waiting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reads = 0

        async def counted() -> Message:
            nonlocal reads
            reads += 1
            if reads == 2:
                self.waiting.set()
            return await receive()

        await self.app(scope, counted if scope["type"] == "http" else receive, send)


@pytest.fixture
def body_waits() -> asyncio.Event:
    """Set once a request of the live server waits for more of its body."""
    return asyncio.Event()


@pytest.fixture
async def live(settings: Settings, body_waits: asyncio.Event) -> AsyncIterator[LiveServer]:
    app = create_app(settings)
    app.add_middleware(_BodyWait, waiting=body_waits)
    async with serve_app(app, settings) as server:
        yield server


def _get(headers: bytes) -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n"


async def test_a_head_within_the_bounds_is_served(live: LiveServer) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 300) for i in range(15))
    assert _status(await _exchange(live.port, _get(headers))) == 200


async def test_too_many_headers_are_431(live: LiveServer) -> None:
    data = await _exchange(live.port, _get(b"".join(b"X-H%d: v\r\n" % i for i in range(25))))
    assert _status(data) == 431
    assert _error(data)["code"] == "headers_too_large"


async def test_too_large_a_head_is_431(live: LiveServer) -> None:
    data = await _exchange(live.port, _get(b"X-Big: " + b"a" * 9000 + b"\r\n"))
    assert _status(data) == 431
    assert _error(data)["code"] == "headers_too_large"


async def test_too_long_a_target_is_431(live: LiveServer) -> None:
    data = await _exchange(
        live.port, b"GET /healthz?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert _status(data) == 431


async def test_an_endless_header_is_cut_off_with_431(live: LiveServer) -> None:
    # Never finished: httptools alone would buffer it all; the raw-byte guard stops it.
    data = await _exchange(live.port, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 2_000_000)
    assert data == b"" or _status(data) == 431


def _runtime(live: LiveServer) -> Runtime:
    runtime: Runtime = live.app.state.runtime
    return runtime


@pytest.mark.parametrize("path", ["/api/v1/auth/login", "/api/v1/devices", "/api/v1/models"])
async def test_a_stalled_body_is_408_without_holding_a_database_connection(
    live: LiveServer, body_waits: asyncio.Event, path: str
) -> None:
    async with _client(live) as http:
        user = await signup(http)
    models = path.endswith("models")
    content_type = b"multipart/form-data; boundary=b" if models else b"application/json"
    first = b"-" if models else b"{"  # the one byte sent is a valid start of the body
    request = (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        b"Authorization: Bearer " + user.token.encode() + b"\r\n"
        b"Content-Type: " + content_type + b"\r\n\r\n" + first
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            await body_waits.wait()  # the endpoint now waits for the 99 missing bytes
        assert _runtime(live).db.pool_in_use() == 0
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    assert _status(data) == 408, data
    assert _error(data)["code"] == "request_timeout"
    assert _runtime(live).db.pool_in_use() == 0


async def test_a_slow_but_moving_body_is_not_cut_off(live: LiveServer) -> None:
    body = json.dumps({"email": "nobody@example.com", "password": PASSWORD}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    try:
        writer.write(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        for start in range(0, len(body), 16):  # 0.3 s apart: under the 0.5 s timeout each
            writer.write(body[start : start + 16])
            await writer.drain()
            await asyncio.sleep(0.3)
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    assert _status(data) == 401, data  # the login was read and answered


@contextlib.asynccontextmanager
async def _client(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        yield http


async def _login_statuses(live: LiveServer, addresses: list[str]) -> list[int]:
    statuses = []
    async with _client(live) as http:
        for address in addresses:
            response = await http.post(
                "/api/v1/auth/login",
                json={"email": "nobody@example.com", "password": PASSWORD},
                headers={"X-Forwarded-For": address},
            )
            statuses.append(response.status_code)
    return statuses


def _limited(settings: Settings, **update: object) -> Settings:
    # In-process rate limits: counts of other tests (one shared Redis) must not interfere.
    return settings.model_copy(
        update={"login_rate_limit_per_address": 2, "redis_url": None, **update}
    )


async def test_forwarded_for_is_not_trusted_by_default(settings: Settings) -> None:
    # Three "different" addresses from one peer: the per-address limit (2) still counts one.
    limited = _limited(settings)
    async with serve_app(create_app(limited), limited) as server:
        statuses = await _login_statuses(server, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    assert statuses == [401, 401, 429]


async def test_forwarded_for_is_trusted_from_configured_proxies(settings: Settings) -> None:
    trusting = _limited(settings, forwarded_allow_ips="127.0.0.1")
    async with serve_app(create_app(trusting), trusting) as server:
        statuses = await _login_statuses(server, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    assert statuses == [401, 401, 401]


async def test_a_stop_that_hangs_is_cut_at_its_bound_and_the_log_says_what_waited(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve, "STOP_BOUND", 0.5)
    # a started NodeServer settles the collector (gc.freeze, a young threshold of 50,000):
    # right for a server process, wrong for the rest of this test session
    monkeypatch.setattr(serve, "settle_collector", lambda: None)
    never = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await never.wait()  # the application's shutdown never ends

    listener = bind_socket("127.0.0.1", 0)
    server = serve.NodeServer(
        serve.server_config(app, settings, host="127.0.0.1", port=0), listener, settings
    )
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
        await asyncio.sleep(0.01)
    server.should_exit = True
    await asyncio.wait_for(task, 10)  # it stops: the hung shutdown did not hold it
    stop = [r.getMessage() for r in caplog.records if "stop: not done" in r.getMessage()]
    assert len(stop) == 1
    assert "app (test_serve.py:" in stop[0]  # where the application's shutdown waited
