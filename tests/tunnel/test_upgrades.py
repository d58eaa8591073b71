"""Tunnel upgrades under pressure: agents that give up, answers counted by kind."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from testkit.live import LiveServer, serve_app
from tests.support.api import signup
from tests.support.tunnel import API, paired_agent_token
from visiona.agent.runner import Agent, AgentOptions
from visiona.app import create_app
from visiona.kit.serve import server_config
from visiona.kit.settings import Settings
from visiona.kit.websocket import DIRECT_EXTENSION, TunnelWebSocketProtocol
from visiona.tunnel.dependencies import HUB
from visiona.tunnel.pacing import TokenBucket
from visiona.wire import TUNNEL_PATH

Scope = dict[str, Any]


class HoldUntilGone:
    """ASGI wrapper: a tunnel upgrade reaches the application only once the server has
    seen its client's socket end, as when an agent's handshake timed out during a storm."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            protocol: TunnelWebSocketProtocol = scope["extensions"][DIRECT_EXTENSION].__self__
            while not protocol.disconnected:  # noqa: ASYNC110 - the protocol offers no event
                await asyncio.sleep(0.01)
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def _serve(app: Any, settings: Settings) -> AsyncIterator[int]:
    """``app`` under ``visiona serve``'s uvicorn configuration on 127.0.0.1:0."""
    config = server_config(app, settings, host="127.0.0.1", port=0)
    config.timeout_graceful_shutdown = 5
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def upgrade_request(port: int, token: str) -> bytes:
    """The raw HTTP upgrade of the tunnel, as an agent sends it."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {API}{TUNNEL_PATH} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()


async def test_an_agent_giving_up_during_its_upgrade_is_counted_without_error_or_500(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)
    caplog.set_level(logging.INFO)
    async with _serve(HoldUntilGone(app), settings) as port:
        live = LiveServer(app=app, port=port)
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            user = await signup(http)
            device_id, token = await paired_agent_token(http, user)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(upgrade_request(port, token))
            await writer.drain()
            writer.write_eof()  # the agent gives up; it still reads what comes back
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            hub = HUB.of(app)
            while hub.upgrades["abandoned"] < 1:  # noqa: ASYNC110 - counted after the socket ends
                await asyncio.sleep(0.01)
            metrics = (await http.get("/metrics")).text
            device = (await http.get(f"{API}/devices/{device_id}", headers=user.headers)).json()
    assert answer == b""  # nobody to answer: no 500, no 101
    assert hub.upgrades["abandoned"] == 1
    assert hub.upgrades["101"] == 0
    assert 'visiona_tunnel_upgrades_total{answer="abandoned"} 1.0' in metrics
    assert device["remote_status"] == "offline"
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == [], [(r.name, r.getMessage()) for r in problems]


def test_the_bucket_lets_a_burst_in_then_books_the_refused_one_slot_each() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, 2.0, clock=lambda: now[0])
    assert [bucket.take(), bucket.take()] == [0, 0]  # the burst
    waits = [bucket.take() for _ in range(8)]
    assert all(w >= 1 for w in waits)
    assert waits == sorted(waits)
    assert waits[-1] >= 4  # eight refused at 2 per second: spread over 4 s, not all at 1
    now[0] += 0.5
    assert bucket.take() == 0  # a token came back


def test_a_refusal_for_another_cause_books_a_spread_slot_without_taking_a_token() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, 2.0, clock=lambda: now[0])
    waits = [bucket.book() for _ in range(8)]
    assert waits == sorted(waits)
    assert waits[-1] >= 4  # eight at 2 per second: spread over 4 s
    assert [bucket.take(), bucket.take()] == [0, 0]  # the burst is still there


async def test_upgrades_beyond_the_accept_rate_get_503_before_the_token_is_checked(
    settings: Settings, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    paced = settings.model_copy(update={"tunnel_accept_rate": 0.5})
    app = create_app(paced)
    async with serve_app(app, paced) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            user = await signup(http)
            pairing = (
                await http.post(f"{API}/pairing-tokens", json={}, headers=user.headers)
            ).json()
        bad = {"Authorization": "Bearer vst_nope"}
        with pytest.raises(InvalidStatus) as first:
            await connect(live.ws_url, additional_headers=bad)
        assert first.value.response.status_code == 401  # the one token of the burst
        with pytest.raises(InvalidStatus) as second:
            await connect(live.ws_url, additional_headers=bad)
        response = second.value.response
        assert response.status_code == 503  # refused before the token was even looked at
        error = json.loads(response.body or b"{}")["error"]
        assert (error["code"], error["reason"]) == ("tunnel_unavailable", "paced")
        retry_after = int(response.headers["Retry-After"])
        assert retry_after >= 1
        # the project's agent is refused too, and waits what it was told (plus jitter)
        caplog.set_level(logging.INFO, logger="visiona.agent")
        agent = Agent(
            AgentOptions(
                server=live.url,
                forward_host="127.0.0.1",
                forward_port=9,
                session_file=tmp_path / "session.json",
                pairing_token=pairing["token"],
                usb_poll_interval=3600,
            )
        )
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        try:
            await asyncio.wait_for(agent.connected.wait(), 60)
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)
    messages = [r.getMessage() for r in caplog.records]
    refused = [m for m in messages if "refused with HTTP 503" in m]
    assert refused, messages
    asked = float(refused[0].split("retry after ")[1].split(" s")[0])
    waited = next(
        float(m.split("reconnecting in ")[1].rstrip("s"))
        for m in messages
        if "reconnecting in" in m
    )
    assert asked <= waited <= asked * 1.5 + 0.05


class CountUpgrades:
    """ASGI wrapper counting the WebSocket upgrades that reach the application (it keeps
    the application's ``state``, where `visiona serve` finds the upgrade gates)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state
        self.upgrades = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            self.upgrades += 1
        await self.app(scope, receive, send)


async def _raw_upgrade(port: int, token: str, extra: str = "") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = upgrade_request(port, token)
    if extra:
        request = request.replace(b"\r\n\r\n", f"\r\n{extra}\r\n\r\n".encode(), 1)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_a_paced_upgrade_is_refused_by_the_protocol_before_the_application_runs(
    settings: Settings,
) -> None:
    paced = settings.model_copy(update={"tunnel_accept_rate": 0.5})
    app = create_app(paced)
    counted = CountUpgrades(app)
    async with _serve(counted, paced) as port:
        first = await _raw_upgrade(port, "vst_nope")
        # a client cannot claim the gate admitted it
        second = await _raw_upgrade(port, "vst_nope", "X-Visiona-Upgrade-Admitted: 1")
    assert first.startswith(b"HTTP/1.1 401")  # the one token of the burst: the route ran
    head, _, body = second.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert b"retry-after: " in head.lower()
    error = json.loads(body)["error"]
    assert (error["code"], error["reason"]) == ("tunnel_unavailable", "paced")
    assert counted.upgrades == 1  # the refused upgrade never reached the application
    assert HUB.of(app).upgrades["503"] == 1


async def test_upgrades_beyond_the_concurrency_bound_are_refused_until_one_ends(
    settings: Settings,
) -> None:
    bounded = settings.model_copy(update={"tunnel_upgrade_concurrency": 2, "tunnel_accept_rate": 0})
    app = create_app(bounded)
    async with _serve(app, bounded):
        hub = HUB.of(app)
        hub.open_upgrade()
        hub.open_upgrade()
        refusal = hub.refuse_upgrade()
        assert refusal is not None
        assert (refusal.status_code, refusal.reason) == (503, "paced")
        assert refusal.headers["Retry-After"] == "1"
        hub.close_upgrade()
        assert hub.refuse_upgrade() is None
        hub.close_upgrade()
