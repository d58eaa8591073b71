"""The HTTP proxy to devices over the tunnel: framing, streaming, errors, aborts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from testkit.device_service import device_app, pattern
from testkit.live import LiveServer, serve_app
from tests.support.api import User, error_code, signup
from tests.support.tunnel import (
    API,
    connect_agent,
    forward_to,
    paired_agent_token,
    wait_for,
)
from visiona.tunnel.dependencies import HUB


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The device's local HTTP service on a loopback port."""
    async with serve_app(device_app()) as service:
        yield service.port


@pytest.fixture
async def connected(
    live: LiveServer, http: httpx.AsyncClient, device_port: int
) -> AsyncIterator[tuple[User, str]]:
    """A user and their device, whose agent forwards to the device service."""
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with connect_agent(live, token, forward_to(device_port)):
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        yield user, device_id


async def _true(value: bool) -> bool:
    return value


def _proxy(device_id: str, path: str) -> str:
    return f"{API}/devices/{device_id}/proxy/{path}"


async def test_request_is_forwarded_with_query_and_without_cloud_credentials(
    http: httpx.AsyncClient, connected: tuple[User, str]
) -> None:
    user, device_id = connected
    response = await http.post(
        _proxy(device_id, "echo/a%20b/c?x=1&y=%2F"),
        content=b"hello device",
        headers={
            **user.headers,
            "Cookie": "visiona_session=secret",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "drop me",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-Host": "evil.example",
            "X-Custom": "kept",
        },
    )
    assert response.status_code == 200, response.text
    seen = response.json()
    headers = dict(seen["headers"])
    assert seen["method"] == "POST"
    assert seen["raw_path"] == "/echo/a%20b/c"
    assert seen["query"] == "x=1&y=%2F"
    assert seen["body"] == "hello device"
    for dropped in ("authorization", "cookie", "x-hop", "keep-alive"):
        assert dropped not in headers
    assert headers["x-custom"] == "kept"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == http.base_url.netloc.decode()
    assert headers["x-forwarded-prefix"] == f"{API}/devices/{device_id}/proxy"
    # the device's hop-by-hop response headers stay on the device's side
    assert response.headers["x-device"] == "yes"
    assert "x-private" not in response.headers


async def test_methods_are_forwarded(http: httpx.AsyncClient, connected: tuple[User, str]) -> None:
    user, device_id = connected
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        response = await http.request(method, _proxy(device_id, "echo/m"), headers=user.headers)
        assert response.status_code == 200
        assert response.json()["method"] == method
    head = await http.head(_proxy(device_id, "bytes/1000"), headers=user.headers)
    assert head.status_code == 200
    assert head.headers["content-length"] == "1000"
    assert head.content == b""


async def test_bodies_stream_both_ways_intact(
    http: httpx.AsyncClient, connected: tuple[User, str]
) -> None:
    user, device_id = connected
    size = 24 * 1024 * 1024 + 7
    async with http.stream("GET", _proxy(device_id, f"bytes/{size}"), headers=user.headers) as r:
        assert r.status_code == 200
        assert r.headers["content-length"] == str(size)
        digest = hashlib.sha256()
        async for chunk in r.aiter_raw():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()
    chunked = await http.get(_proxy(device_id, "bytes/300000?chunked=1"), headers=user.headers)
    assert chunked.content == pattern(300000)

    payload = pattern(9 * 1024 * 1024 + 3)

    async def upload() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        for start in range(0, len(payload), 100_000):
            yield payload[start : start + 100_000]

    for content in (payload, upload()):
        response = await http.post(
            _proxy(device_id, "upload"), content=content, headers=user.headers
        )
        assert response.status_code == 201, response.text
        assert response.json() == {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
        }


async def test_concurrent_requests_share_the_tunnel(
    http: httpx.AsyncClient, connected: tuple[User, str]
) -> None:
    user, device_id = connected
    responses = await asyncio.gather(
        *(
            http.get(_proxy(device_id, f"bytes/{100_000 + i}"), headers=user.headers)
            for i in range(16)
        )
    )
    for i, response in enumerate(responses):
        assert response.content == pattern(100_000 + i)


async def test_offline_foreign_and_unknown_devices(
    http: httpx.AsyncClient, connected: tuple[User, str]
) -> None:
    user, device_id = connected
    other = await signup(http)
    foreign = await http.get(_proxy(device_id, "echo/x"), headers=other.headers)
    assert (foreign.status_code, error_code(foreign)) == (404, "not_found")
    unknown = await http.get(_proxy(str(uuid.uuid4()), "echo/x"), headers=user.headers)
    assert unknown.status_code == 404
    offline_id, _ = await paired_agent_token(http, user)
    offline = await http.get(_proxy(offline_id, "echo/x"), headers=user.headers)
    assert (offline.status_code, error_code(offline)) == (502, "device_offline")
    http.cookies.clear()  # signup left a session cookie in the client
    anonymous = await http.get(_proxy(device_id, "echo/x"))
    assert anonymous.status_code == 401


async def test_no_response_head_in_time_is_504(
    http: httpx.AsyncClient, connected: tuple[User, str]
) -> None:
    user, device_id = connected
    response = await http.get(_proxy(device_id, "slow-head"), headers=user.headers)
    assert (response.status_code, error_code(response)) == (504, "device_timeout")


async def test_agent_that_cannot_reach_its_service_is_502(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)

    async def refuse(stream: Any) -> None:
        stream.reset()

    async with connect_agent(live, token, refuse):
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        response = await http.get(_proxy(device_id, "echo/x"), headers=user.headers)
    assert (response.status_code, error_code(response)) == (502, "device_unreachable")


async def test_an_invalid_answer_is_502_and_a_truncated_chunked_one_is_cut_off(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)

    async def answer(stream: Any) -> None:
        head = await stream.readuntil(b"\r\n\r\n")
        if b"/garbage" in head:
            stream.write(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n")
        else:  # 1xx first, then a chunked body that ends before its last chunk
            stream.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            stream.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            stream.write(b"5\r\nhello\r\n3\r\nab")
        stream.write_eof()

    async with connect_agent(live, token, answer):
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        response = await http.get(_proxy(device_id, "garbage"), headers=user.headers)
        assert (response.status_code, error_code(response)) == (502, "device_unreachable")
        received: list[bytes] = []

        async def read_cut() -> None:
            async with http.stream("GET", _proxy(device_id, "cut"), headers=user.headers) as r:
                assert r.status_code == 200
                async for chunk in r.aiter_bytes():
                    received.append(chunk)  # noqa: PERF401 - kept when the stream breaks off

        with pytest.raises(httpx.RemoteProtocolError):  # the response is aborted, not ended
            await read_cut()
        assert b"".join(received).startswith(b"hello")


async def test_tunnel_drop_mid_response_aborts_the_client_response_with_one_info_line(
    live: LiveServer,
    http: httpx.AsyncClient,
    device_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    caplog.set_level(logging.INFO)
    async with connect_agent(live, token, forward_to(device_port)) as agent:
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        async with http.stream("GET", _proxy(device_id, "stall"), headers=user.headers) as r:
            assert r.status_code == 200
            chunks = r.aiter_raw()
            assert await anext(chunks) == b"first part;"
            agent.ws.transport.abort()  # the agent vanishes: no close frame, no FIN
            with pytest.raises(httpx.TransportError):
                async for _ in chunks:
                    pass
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is None))
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a dropped tunnel"
    broke_off = [r for r in caplog.records if "broke off" in r.getMessage()]
    assert [(r.name, r.levelno) for r in broke_off] == [("visiona.tunnel.proxy", logging.INFO)]


async def test_client_going_away_resets_the_stream(
    live: LiveServer, http: httpx.AsyncClient, connected: tuple[User, str]
) -> None:
    user, device_id = connected
    hub = HUB.of(live.app)
    async with (
        httpx.AsyncClient(base_url=live.url, timeout=30) as once,
        once.stream("GET", _proxy(device_id, "stall"), headers=user.headers) as r,
    ):
        assert await anext(r.aiter_raw()) == b"first part;"
        assert hub.open_streams() == 1
    # the client closed its connection mid-body: the stream is reset, not left open
    await wait_for(lambda: _true(hub.open_streams() == 0))


async def _raw(
    live: LiveServer, target: str, headers: dict[str, str]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One GET with ``target`` sent byte for byte (like ``curl --path-as-is``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = [(k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in header_lines)]
    return int(status_line.split()[1]), pairs, body


async def test_percent_encoded_route_reaches_the_device_with_a_clean_target(
    live: LiveServer, connected: tuple[User, str]
) -> None:
    user, device_id = connected
    status, _, body = await _raw(
        live, f"{API}/devices/{device_id}/prox%79/echo/x%2Fy?q=1", user.headers
    )
    assert status == 200, body
    seen = json.loads(body)
    assert seen["raw_path"] == "/echo/x/y"
    assert seen["query"] == "q=1"
    assert dict(seen["headers"])["x-forwarded-prefix"] == f"{API}/devices/{device_id}/proxy"


@pytest.mark.parametrize(
    "path",
    ["../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "a/..%2F..%2Fetc", "a/%2E%2E/b"],
)
async def test_dot_dot_segments_are_refused_before_the_device(
    live: LiveServer, connected: tuple[User, str], path: str
) -> None:
    user, device_id = connected
    status, _, body = await _raw(live, f"{API}/devices/{device_id}/proxy/{path}", user.headers)
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    "path",
    [
        "visiona/models/x",
        "/visiona/models/x",
        "%2Fvisiona%2Fmodels/x",
        "ViSiOnA/models/x",
        "%76isiona/models/x",
        "./visiona/models/x",
        "visiona%2fmodels%2fx",
    ],
)
async def test_reserved_prefix_is_unreachable_in_every_encoding(
    live: LiveServer, connected: tuple[User, str], path: str
) -> None:
    user, device_id = connected
    status, _, body = await _raw(live, f"{API}/devices/{device_id}/proxy/{path}", user.headers)
    assert status == 403, body
    assert json.loads(body)["error"]["code"] == "reserved_path"


async def test_proxied_responses_are_sandboxed_with_the_devices_own_date_and_server(
    live: LiveServer, connected: tuple[User, str]
) -> None:
    user, device_id = connected
    status, headers, body = await _raw(live, _proxy(device_id, "echo/page"), user.headers)
    assert status == 200, body
    names = [name for name, _ in headers]
    assert names.count("date") == 1
    assert [v for k, v in headers if k == "server"] == ["uvicorn"]  # the device's server
    policy = [v for k, v in headers if k == "content-security-policy"]
    assert len(policy) == 1
    assert policy[0].startswith("sandbox")
    assert "allow-same-origin" not in policy[0]
    assert [v for k, v in headers if k == "x-content-type-options"] == ["nosniff"]


async def test_cloud_responses_carry_one_date_and_no_server_header(live: LiveServer) -> None:
    status, headers, _ = await _raw(live, "/healthz", {})
    assert status == 200
    names = [name for name, _ in headers]
    assert names.count("date") == 1
    assert "server" not in names


async def test_a_bad_device_id_is_422_before_the_caller_is_checked(
    http: httpx.AsyncClient,
) -> None:
    # the proxy route parses its own parameters (off FastAPI's dependency solving) in
    # FastAPI's order and with FastAPI's error: the path first, then the session
    response = await http.get(_proxy("not-a-uuid", "x"))
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    fields = response.json()["error"]["fields"]
    assert fields[0]["loc"] == ["path", "device_id"]
    assert fields[0]["type"] == "uuid_parsing"
    anonymous = await http.get(_proxy(str(uuid.uuid4()), "x"))
    assert anonymous.status_code == 401
    assert error_code(anonymous) == "unauthorized"


async def test_proxied_requests_are_counted_under_the_route_template(
    http: httpx.AsyncClient, connected: tuple[User, str]
) -> None:
    user, device_id = connected
    response = await http.get(_proxy(device_id, "echo/count-me"), headers=user.headers)
    assert response.status_code == 200
    text = (await http.get("/metrics")).text
    template = f"{API}/devices/{{device_id}}/proxy/{{path:path}}"
    assert f'visiona_http_requests_total{{method="GET",route="{template}",status="200"}}' in text
    assert device_id not in text
