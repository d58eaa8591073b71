"""End to end with the real thing: a Go agent (hashicorp/yamux + gorilla/websocket)
through the Python server's proxy, and ``visiona agent`` under a Go cloud stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from testkit.device_service import device_app, pattern
from testkit.gopeer import run_peer
from testkit.live import LiveServer, serve_app
from tests.support.api import signup
from tests.support.devices import pairing_token
from tests.support.tunnel import API, wait_for
from visiona.agent.runner import Agent, AgentOptions
from visiona.tunnel.dependencies import HUB

BIG = 64 * 1024 * 1024


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Interop is about the wire, not the database: SQLite only."""
    return str(request.param)


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The device's local HTTP service on a loopback port."""
    async with serve_app(device_app()) as service:
        yield service.port


async def _sha256_of_download(http: httpx.AsyncClient, url: str, **kwargs: Any) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    async with http.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


async def test_go_agent_through_the_python_proxy(
    live: LiveServer,
    http: httpx.AsyncClient,
    device_port: int,
    go_tunnel_peer: Path,
    tmp_path: Path,
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    args = [
        "-mode", "agent", "-server", live.url, "-token", token,
        "-forward", f"127.0.0.1:{device_port}", "-session-file", str(tmp_path / "go.json"),
    ]  # fmt: skip
    async with run_peer(go_tunnel_peer, *args) as agent:
        device_id = (await agent.event("paired"))["device_id"]
        await agent.event("connected")
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        base = f"{API}/devices/{device_id}/proxy"

        size, digest = await _sha256_of_download(http, f"{base}/bytes/{BIG}", headers=user.headers)
        assert (size, digest) == (BIG, hashlib.sha256(pattern(BIG)).hexdigest())

        upload = pattern(8 * 1024 * 1024 + 1)
        response = await http.post(f"{base}/upload", content=upload, headers=user.headers)
        assert response.json()["sha256"] == hashlib.sha256(upload).hexdigest()

        sizes = [50_000 + 997 * i for i in range(32)]
        responses = await asyncio.gather(
            *(http.get(f"{base}/bytes/{n}", headers=user.headers) for n in sizes)
        )
        for n, response in zip(sizes, responses, strict=True):
            assert response.status_code == 200
            assert response.content == pattern(n)

        response = await http.delete(f"{API}/devices/{device_id}", headers=user.headers)
        assert response.status_code == 204
        closed = await agent.event("closed")
        assert closed["code"] == 4401
        refused = await agent.event("refused")
        assert (refused["status"], refused["what"]) == (401, "tunnel")
        assert await agent.wait() == 3


async def test_visiona_agent_under_the_go_cloud_stand_in(
    device_port: int, go_tunnel_peer: Path, tmp_path: Path
) -> None:
    async with run_peer(go_tunnel_peer, "-mode", "cloud") as cloud:
        port = (await cloud.event("listening"))["port"]
        server = f"http://127.0.0.1:{port}"
        options = AgentOptions(
            server=server,
            forward_host="127.0.0.1",
            forward_port=device_port,
            session_file=tmp_path / "session.json",
            pairing_token="vpt_for-the-stand-in",
            serial_number="SN-PY",
            usb_poll_interval=0.2,
        )
        agent = Agent(options)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            paired = await cloud.event("pair")
            assert paired["serial_number"] == "SN-PY"
            await cloud.event("agent_connected")
            status = await cloud.event("status")
            assert status["authorized"] is True
            assert status["usb_status"] in {"online", "offline", "unknown"}
            async with httpx.AsyncClient(base_url=server, timeout=60) as http:
                size, digest = await _sha256_of_download(http, f"/proxy/bytes/{BIG}")
                assert (size, digest) == (BIG, hashlib.sha256(pattern(BIG)).hexdigest())
                upload = pattern(5_000_000)
                response = await http.post("/proxy/upload", content=upload)
                assert response.json()["sha256"] == hashlib.sha256(upload).hexdigest()
                responses = await asyncio.gather(
                    *(http.get(f"/proxy/bytes/{1000 + i}") for i in range(32))
                )
                assert [r.content for r in responses] == [pattern(1000 + i) for i in range(32)]
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0


async def _true(value: bool) -> bool:
    return value


async def test_a_go_agent_never_sees_a_frame_for_a_stream_that_ended(
    live: LiveServer,
    http: httpx.AsyncClient,
    device_port: int,
    go_tunnel_peer: Path,
    tmp_path: Path,
) -> None:
    """hashicorp/yamux logs ``[WARN] yamux: frame for missing stream`` for any frame that
    arrives after both FINs: the server sends nothing for a stream once it ended."""
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    args = [
        "-mode", "agent", "-server", live.url, "-token", token, "-yamux-log",
        "-forward", f"127.0.0.1:{device_port}", "-session-file", str(tmp_path / "go.json"),
    ]  # fmt: skip
    async with run_peer(go_tunnel_peer, *args) as agent:
        device_id = (await agent.event("paired"))["device_id"]
        await agent.event("connected")
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        base = f"{API}/devices/{device_id}/proxy"
        # small and large answers, bodies both ways, one at a time and many at once
        for n in range(60):
            response = await http.get(f"{base}/bytes/{1 + 4099 * n}", headers=user.headers)
            assert response.status_code == 200
        for n in range(20):
            response = await http.post(
                f"{base}/upload", content=pattern(70_000 * n + 1), headers=user.headers
            )
            assert response.status_code == 201
        for _ in range(4):
            answers = await asyncio.gather(
                *(http.get(f"{base}/echo/{n}?q={n}", headers=user.headers) for n in range(25))
            )
            assert all(a.status_code == 200 for a in answers)
        big = await http.get(f"{base}/bytes/{3 * 1024 * 1024}", headers=user.headers)
        assert big.content == pattern(3 * 1024 * 1024)
        # a ping both ways proves every frame sent before it reached the agent
        await hub.get(uuid.UUID(device_id)).session.ping()  # type: ignore[union-attr]
        await agent.stop()
    warnings = [line for line in agent.stderr if "frame for missing stream" in line]
    assert warnings == [], f"{len(warnings)} late frames, e.g. {warnings[:3]}"
    assert not [line for line in agent.stderr if "[ERR]" in line], agent.stderr[-5:]


async def test_a_go_agent_unaware_of_tcp_streams_fails_a_forward_cleanly(
    live: LiveServer,
    http: httpx.AsyncClient,
    device_port: int,
    go_tunnel_peer: Path,
    tmp_path: Path,
) -> None:
    """A hashicorp/yamux agent forwards the TCP stream's head to its local HTTP service:
    the forward ends with a clear close (4502), the tunnel and the proxy carry on."""
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    args = [
        "-mode", "agent", "-server", live.url, "-token", token,
        "-forward", f"127.0.0.1:{device_port}", "-session-file", str(tmp_path / "go.json"),
    ]  # fmt: skip
    async with run_peer(go_tunnel_peer, *args) as agent:
        device_id = (await agent.event("paired"))["device_id"]
        await agent.event("connected")
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        url = f"ws://127.0.0.1:{live.port}{API}/devices/{device_id}/tcp/22"
        async with connect(url, additional_headers=user.headers) as ws:
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()
            rcvd = ws.protocol.close_rcvd
        assert rcvd is not None
        assert rcvd.code == 4502
        assert "does not support TCP forwarding" in rcvd.reason
        answer = await http.get(f"{API}/devices/{device_id}/proxy/bytes/10", headers=user.headers)
        assert answer.status_code == 200
