"""TCP streams with the real agent and the real server: what reaches 127.0.0.1:port.

The cloud's side is :func:`visiona.tunnel.tcp.open_tcp_stream` on the server's own
session of the device's tunnel; the device's side a real TCP echo service that
counts its connections, so a refused port is seen never to be touched.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from testkit.live import LiveServer
from tests.support.agent import running
from tests.support.api import User, signup
from tests.support.tcp import EchoService, tcp_agent
from tests.support.tunnel import API, connect_agent, forward_to, paired_agent_token, wait_for
from visiona.tunnel.dependencies import HUB
from visiona.tunnel.tcp import (
    ForwardRefusedError,
    ForwardUnreachableError,
    ForwardUnsupportedError,
    open_tcp_stream,
    stream_head,
)
from visiona.yamux import Session


@pytest.fixture
async def echo() -> AsyncIterator[EchoService]:
    """The echo service."""
    service = EchoService()
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def _session(live: LiveServer, http: httpx.AsyncClient, user: User) -> tuple[str, Session]:
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    device_id = str(items[0]["id"])
    link = HUB.of(live.app).get(uuid.UUID(device_id))
    assert link is not None
    return device_id, link.session


async def test_an_allowed_port_carries_bytes_both_ways_with_half_close(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [echo.port])
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        _, session = await _session(live, http, user)
        stream, early = await open_tcp_stream(session, echo.port, 10)
        payload = bytes(range(256)) * 4096  # 1 MiB
        stream.write(payload)
        stream.write_eof()  # our direction ends; the service still answers after it
        received = bytearray(early)
        while chunk := await stream.read(1 << 20):
            received += chunk
        assert bytes(received) == b"hello\n" + payload + b"bye\n"
        stream.close()
        assert echo.connections == 1


async def test_a_port_not_allowed_is_refused_without_touching_it(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [echo.port + 1 if echo.port < 65535 else 1])
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        _, session = await _session(live, http, user)
        with pytest.raises(ForwardRefusedError, match=f"does not allow port {echo.port}") as info:
            await open_tcp_stream(session, echo.port, 10)
        assert info.value.code == 4403
        assert echo.connections == 0


async def test_no_port_is_allowed_by_default(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [])
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        _, session = await _session(live, http, user)
        with pytest.raises(ForwardRefusedError):
            await open_tcp_stream(session, echo.port, 10)
        assert echo.connections == 0


async def test_an_allowed_port_nothing_listens_on_is_a_clear_unreachable(
    live: LiveServer, http: httpx.AsyncClient, closed_port: int, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [closed_port])
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        _, session = await _session(live, http, user)
        with pytest.raises(ForwardUnreachableError, match=f"Nothing accepts on port {closed_port}"):
            await open_tcp_stream(session, closed_port, 10)


async def test_a_malformed_tcp_head_gets_a_400_and_reaches_nothing(
    live: LiveServer, http: httpx.AsyncClient, echo: EchoService, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [echo.port])
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        _, session = await _session(live, http, user)
        for head in (
            stream_head(echo.port).replace(b"visiona-tcp", b"websocket"),
            f"GET /visiona/tcp/{echo.port}0000 HTTP/1.1\r\nUpgrade: visiona-tcp\r\n\r\n".encode(),
            b"GET /visiona/tcp/x HTTP/1.1\r\nUpgrade: visiona-tcp\r\n\r\n",
        ):
            stream = await session.open_stream()
            stream.write(head)
            answer = bytearray()
            while chunk := await stream.read(1 << 16):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert b'"code":"bad_request"' in answer
        assert echo.connections == 0


async def test_the_agent_reports_its_allowed_ports_to_the_cloud(
    live: LiveServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    user, agent = await tcp_agent(live, http, tmp_path, [5900, 22])
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)

        async def reported() -> bool:
            items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
            return bool(items) and items[0]["tcp_ports"] == [22, 5900]

        await wait_for(reported)


async def test_an_agent_that_predates_tcp_streams_fails_cleanly_not_hangs(
    live: LiveServer, http: httpx.AsyncClient, device_port: int
) -> None:
    """An agent unaware of the header forwards it to its local HTTP service (as a
    hashicorp/yamux agent does): the service's HTTP error becomes a clear refusal."""
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with connect_agent(live, token, forward_to(device_port)):
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        link = hub.get(uuid.UUID(device_id))
        assert link is not None
        with pytest.raises(ForwardUnsupportedError, match="does not support TCP forwarding"):
            await open_tcp_stream(link.session, 22, 10)


async def _true(value: bool) -> bool:
    return value
