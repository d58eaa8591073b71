"""``GET /api/v1/devices/{id}/tcp/{port}``: a WebSocket carrying one TCP connection.

A real server, a real ``visiona agent`` (or, where the test needs an agent that never
reported its ports or predates the feature, the agent's own stream dispatcher or a
plain forwarder behind a minimal tunnel client) and a real TCP echo service that
counts its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from testkit.device_service import device_app
from testkit.live import LiveServer, serve_app
from tests.support.agent import running
from tests.support.api import User, signup
from tests.support.apikeys import create_key, key_headers
from tests.support.audit import stored_events
from tests.support.tcp import EchoService, agent_dispatcher, tcp_agent
from tests.support.tunnel import API, connect_agent, forward_to, paired_agent_token, wait_for
from visiona.kit.settings import Settings
from visiona.tunnel.dependencies import HUB
from visiona.yamux import Stream


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Small forward limits and a short answer timeout (and what a test's
    ``forward_settings`` marker adds)."""
    marker = request.node.get_closest_marker("forward_settings")
    return settings.model_copy(
        update={
            "forward_max_per_device": 2,
            "forward_max_per_user": 3,
            "forward_connect_timeout": 1.0,
            **(marker.kwargs if marker else {}),
        }
    )


@pytest.fixture
async def echo() -> AsyncIterator[EchoService]:
    """The device's TCP echo service."""
    service = EchoService()
    await service.start()
    yield service
    await service.stop()


def _url(live: LiveServer, device_id: str, port: int | str) -> str:
    return f"ws://127.0.0.1:{live.port}{API}/devices/{device_id}/tcp/{port}"


@contextlib.asynccontextmanager
async def _forward(
    live: LiveServer, user: User, device_id: str, port: int | str, **headers: str
) -> AsyncIterator[ClientConnection]:
    async with connect(
        _url(live, device_id, port),
        additional_headers=headers or user.headers,
        max_size=None,
        compression=None,
    ) as ws:
        yield ws


async def _refused(live: LiveServer, device_id: str, port: int | str, **headers: str) -> Any:
    """The HTTP error answered instead of the upgrade: (status, error body)."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(_url(live, device_id, port), additional_headers=headers):
            pass
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def _read_all(ws: ClientConnection) -> bytes:
    """Bytes until the server's half-close (an empty message)."""
    data = bytearray()
    while chunk := await ws.recv():
        assert isinstance(chunk, bytes)
        data += chunk
    return bytes(data)


async def _device_id(http: httpx.AsyncClient, user: User) -> str:
    async def listed() -> bool:
        items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
        return bool(items) and items[0]["tcp_ports"] is not None

    await wait_for(listed)
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    return str(items[0]["id"])


async def test_a_forward_carries_bytes_both_ways_and_is_audited(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [echo.port])
    async with running(agent):
        device_id = await _device_id(http, user)
        payload = bytes(range(256)) * 8192  # 2 MiB
        async with _forward(live, user, device_id, echo.port) as ws:
            await ws.send(payload)
            await ws.send(b"")  # our half-close: the service still answers after it
            received = await _read_all(ws)
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        assert received == b"hello\n" + payload + b"bye\n"
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1000

        async def audited() -> bool:
            return (
                len(
                    await stored_events(
                        live.app, action="forward.closed", device_id=uuid.UUID(device_id)
                    )
                )
                == 1
            )

        await wait_for(audited)
        opened = await stored_events(
            live.app, action="forward.opened", device_id=uuid.UUID(device_id)
        )
        closed = await stored_events(
            live.app, action="forward.closed", device_id=uuid.UUID(device_id)
        )
        assert [e.detail["port"] for e in opened] == [echo.port]
        detail = closed[0].detail
        assert detail["forward_id"] == opened[0].detail["forward_id"]
        assert detail["bytes_to_device"] == len(payload)
        assert detail["bytes_from_device"] == len(payload) + len(b"hello\nbye\n")
        assert detail["duration_seconds"] >= 0
        assert detail["close_code"] == 1000
        assert str(closed[0].device_id) == device_id

        metrics = _samples((await http.get("/metrics")).text)
        assert metrics["visiona_forwards_opened_total"] == 1
        assert metrics["visiona_forward_bytes_to_devices_total"] == len(payload)
        assert metrics["visiona_forward_bytes_from_devices_total"] == len(payload) + 10
        assert metrics["visiona_forwards_open"] == 0


def _samples(text: str) -> dict[str, float]:
    """The unlabelled samples of a Prometheus text page."""
    return {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in text.splitlines())
        if name and not name.startswith("#") and "{" not in name
    }


async def test_credentials_are_the_proxys_and_another_users_device_is_404(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [echo.port])
    async with running(agent):
        device_id = await _device_id(http, user)
        assert (await _refused(live, device_id, echo.port))[0] == 401
        other = await signup(http)
        status, body = await _refused(live, device_id, echo.port, **other.headers)
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, body = await _refused(live, device_id, 0, **user.headers)
        assert (status, body["error"]["code"]) == (422, "validation_error")
        status, body = await _refused(live, "not-a-uuid", echo.port, **user.headers)
        assert (status, body["error"]["code"]) == (422, "validation_error")
        # the session cookie works from the same origin only
        cookie = f"visiona_session={user.token}"
        status, body = await _refused(live, device_id, echo.port, Cookie=cookie)
        assert (status, body["error"]["code"]) == (403, "csrf_failed")
        foreign = {"Cookie": cookie, "Origin": "http://evil.example"}
        assert (await _refused(live, device_id, echo.port, **foreign))[0] == 403
        same = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{live.port}"}
        async with _forward(live, user, device_id, echo.port, **same) as ws:
            assert await ws.recv() == b"hello\n"
        assert echo.connections == 1


async def test_an_offline_device_is_a_clear_502(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService
) -> None:
    user = await signup(http)
    device_id, _token = await paired_agent_token(http, user)
    status, body = await _refused(live, device_id, echo.port, **user.headers)
    assert (status, body["error"]["code"]) == (502, "device_offline")


async def test_a_port_the_agent_reported_not_allowed_is_403_before_the_upgrade(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [22])
    async with running(agent):
        device_id = await _device_id(http, user)
        status, body = await _refused(live, device_id, echo.port, **user.headers)
        assert (status, body["error"]["code"]) == (403, "port_not_allowed")
        assert "allowed: 22" in body["error"]["message"]
        assert echo.connections == 0
        refused = await stored_events(
            live.app, action="forward.refused", device_id=uuid.UUID(device_id)
        )
        assert [e.detail["port"] for e in refused] == [echo.port]


async def _tunnel_up(live: LiveServer, device_id: str) -> None:
    hub = HUB.of(live.app)

    async def up() -> bool:
        return hub.get(uuid.UUID(device_id)) is not None

    await wait_for(up)


async def _closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()
    rcvd = ws.protocol.close_rcvd
    assert rcvd is not None
    return rcvd.code, rcvd.reason


async def test_a_refusal_by_the_agent_closes_with_4403_and_a_reason(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with connect_agent(live, token, agent_dispatcher([])):
        await _tunnel_up(live, device_id)
        async with _forward(live, user, device_id, echo.port) as ws:
            code, reason = await _closed_with(ws)
        assert code == 4403
        assert f"does not allow port {echo.port}" in reason
        assert echo.connections == 0

        async def audited() -> bool:
            return (
                len(
                    await stored_events(
                        live.app, action="forward.refused", device_id=uuid.UUID(device_id)
                    )
                )
                == 1
            )

        await wait_for(audited)


async def test_an_agent_that_predates_tcp_forwarding_gives_4502_not_a_hang(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with (
        serve_app(device_app()) as service,
        connect_agent(live, token, forward_to(service.port)),
    ):
        await _tunnel_up(live, device_id)
        async with _forward(live, user, device_id, 22) as ws:
            code, reason = await _closed_with(ws)
    assert code == 4502
    assert "does not support TCP forwarding" in reason


async def test_an_agent_that_never_answers_gives_4504(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    held: list[Stream] = []

    async def silent(stream: Stream) -> None:
        held.append(stream)  # reads nothing, answers nothing
        await asyncio.Event().wait()

    async with connect_agent(live, token, silent):
        await _tunnel_up(live, device_id)
        async with _forward(live, user, device_id, 22) as ws:
            code, reason = await _closed_with(ws)
    assert code == 4504
    assert "did not answer" in reason
    assert len(held) == 1


async def test_forwards_are_limited_per_device_and_per_user(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [echo.port])
    async with running(agent):
        device_id = await _device_id(http, user)
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(2):
                ws = await stack.enter_async_context(_forward(live, user, device_id, echo.port))
                assert await ws.recv() == b"hello\n"
            status, body = await _refused(live, device_id, echo.port, **user.headers)
            assert (status, body["error"]["code"]) == (429, "too_many_forwards")
        # the slots come back when the forwards end
        async with _forward(live, user, device_id, echo.port) as ws:
            assert await ws.recv() == b"hello\n"


async def test_the_per_user_limit_spans_devices(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user = await signup(http)
    tokens = [await paired_agent_token(http, user) for _ in range(2)]
    async with contextlib.AsyncExitStack() as stack:
        for device_id, token in tokens:
            await stack.enter_async_context(
                connect_agent(live, token, agent_dispatcher([echo.port]))
            )
            await _tunnel_up(live, device_id)
        opened = 0
        for device_id, _ in tokens:
            for _ in range(2):
                if opened == 3:
                    break
                ws = await stack.enter_async_context(_forward(live, user, device_id, echo.port))
                assert await ws.recv() == b"hello\n"
                opened += 1
        status, body = await _refused(live, tokens[1][0], echo.port, **user.headers)
        assert (status, body["error"]["code"]) == (429, "too_many_forwards")
        assert "You have 3" in body["error"]["message"]


@pytest.mark.forward_settings(forward_idle_timeout=0.3)
async def test_an_idle_forward_is_closed_with_4408(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [echo.port])
    async with running(agent):
        device_id = await _device_id(http, user)
        async with _forward(live, user, device_id, echo.port) as ws:
            assert await ws.recv() == b"hello\n"
            code, reason = await _closed_with(ws)
    assert (code, reason) == (4408, "idle timeout")


@pytest.mark.forward_settings(forward_max_duration=0.5)
async def test_a_forward_past_its_maximum_duration_is_closed_with_4408(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [echo.port])
    async with running(agent):
        device_id = await _device_id(http, user)
        async with _forward(live, user, device_id, echo.port) as ws:
            assert await ws.recv() == b"hello\n"

            async def chatter() -> None:
                with contextlib.suppress(ConnectionClosed):
                    while True:  # never idle
                        await ws.send(b"x")
                        await asyncio.sleep(0.05)

            talking = asyncio.create_task(chatter())
            code, reason = await _closed_with(ws)
            talking.cancel()
    assert (code, reason) == (4408, "maximum duration reached")


async def test_unpairing_closes_live_forwards_within_a_second(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [echo.port])
    async with running(agent):
        device_id = await _device_id(http, user)
        async with (
            _forward(live, user, device_id, echo.port) as first,
            _forward(live, user, device_id, echo.port) as second,
        ):
            for ws in (first, second):
                assert await ws.recv() == b"hello\n"
            response = await http.delete(f"{API}/devices/{device_id}", headers=user.headers)
            assert response.status_code == 204
            async with asyncio.timeout(1.0):  # the bound: within a second
                closes = await asyncio.gather(_closed_with(first), _closed_with(second))
        assert [code for code, _ in closes] == [4401, 4401]
        assert "unpaired" in closes[0][1]


async def test_a_forward_opened_with_an_api_key_is_audited_as_the_key(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [echo.port])
    key = await create_key(http, user, ["proxy"])
    async with running(agent):
        device_id = await _device_id(http, user)
        async with _forward(live, user, device_id, echo.port, **key_headers(key["key"])) as ws:
            await ws.send(b"ping")
            await ws.send(b"")
            assert await _read_all(ws) == b"hello\npingbye\n"

        async def audited() -> bool:
            closed = await stored_events(
                live.app, action="forward.closed", device_id=uuid.UUID(device_id)
            )
            return len(closed) == 1

        await wait_for(audited)
    for action in ("forward.opened", "forward.closed"):
        (event,) = await stored_events(live.app, action=action, device_id=uuid.UUID(device_id))
        assert (event.actor_type, event.actor_id) == ("api_key", uuid.UUID(key["id"]))
