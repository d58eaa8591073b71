"""The agent tunnel endpoint: pre-upgrade auth, newest wins, revocation, status, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, update
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from testkit.live import LiveServer, serve_app
from tests.support.api import signup
from tests.support.tunnel import (
    API,
    connect_agent,
    paired_agent_token,
    wait_for,
)
from visiona.app import create_app
from visiona.kit.clock import utcnow
from visiona.kit.runtime import Runtime
from visiona.kit.schema import devices
from visiona.kit.settings import Settings
from visiona.tunnel.dependencies import HUB
from visiona.yamux import StreamResetError


def _runtime(live: LiveServer) -> Runtime:
    runtime: Runtime = live.app.state.runtime
    return runtime


async def _row(live: LiveServer, device_id: str) -> dict[str, Any]:
    async with _runtime(live).db.transaction() as conn:
        row = (
            await conn.execute(select(devices).where(devices.c.id == uuid.UUID(device_id)))
        ).one()
    return dict(row._mapping)


async def _denied(live: LiveServer, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        await connect(live.ws_url, additional_headers=headers)
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def test_upgrade_without_or_with_a_bad_token_is_401_with_an_error_body(
    live: LiveServer, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    user = await signup(http)
    _, token = await paired_agent_token(http, user)
    caplog.set_level(logging.INFO)
    for headers in ({}, {"Authorization": "Bearer vst_nope"}, {"Authorization": f"Basic {token}"}):
        status, body = await _denied(live, headers)
        assert status == 401
        assert body["error"]["code"] == "unauthorized"
    # a user's web session token is no agent credential either
    status, _ = await _denied(live, {"Authorization": f"Bearer {user.token}"})
    assert status == 401
    # A refusal is an answer, not a server error (uvicorn calls it a missing handshake).
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]


async def test_a_stream_the_agent_opens_is_reset_at_once_and_counted(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with connect_agent(live, token) as agent:
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        streams = [await agent.session.open_stream() for _ in range(5)]
        for stream in streams:
            stream.write(b"x" * 200 * 1024)  # held nowhere on the server
        for stream in streams:
            with pytest.raises(StreamResetError):
                await stream.read()
        assert hub.open_streams() == 0
        metrics = (await http.get("/metrics")).text
        assert "visiona_tunnel_streams_refused_total 5.0" in metrics
        # The tunnel itself is unharmed: the server's streams still work.
        link = hub.get(uuid.UUID(device_id))
        assert link is not None
        stream = await link.session.open_stream()
        stream.write(b"ping")
        stream.write_eof()
        assert await stream.read() == b"ping"


async def test_connect_carries_streams_and_marks_the_device_online(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with connect_agent(live, token) as agent:
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        link = hub.get(uuid.UUID(device_id))
        assert link is not None
        assert link.direct  # `visiona serve`'s protocol feeds the session itself
        # the server is the yamux client: it opens odd stream ids, the agent echoes
        stream = await link.session.open_stream()
        payload = bytes(range(256)) * 8192  # 2 MiB: several WebSocket messages
        stream.write(payload)
        stream.write_eof()
        assert await stream.read() == payload
        assert stream.stream_id % 2 == 1
        # written with the next status batch (at most 0.25 s after the connect)
        await wait_for(lambda: _status_is(live, device_id, "online"))
        row = await _row(live, device_id)
        assert row["last_connected_at"] is not None
        assert row["last_seen_at"] is not None
        shown = (await http.get(f"{API}/devices/{device_id}", headers=user.headers)).json()
        assert shown["remote_status"] == "online"
        metrics = (await http.get("/metrics")).text
        assert "visiona_tunnels_connected 1.0" in metrics
        assert "visiona_tunnel_bytes_to_devices" in metrics
        assert "visiona_tunnel_bytes_from_devices" in metrics
        assert "visiona_tunnel_streams_open" in metrics
        assert agent.close_code is None
    await wait_for(lambda: _status_is(live, device_id, "offline"))
    assert hub.get(uuid.UUID(device_id)) is None


async def test_under_another_server_the_tunnel_runs_over_asgi_messages(
    settings: Settings,
) -> None:
    app = create_app(settings)
    async with (
        serve_app(app) as live,  # plain uvicorn: no direct path offered
        httpx.AsyncClient(base_url=live.url, timeout=30) as http,
    ):
        user = await signup(http)
        device_id, token = await paired_agent_token(http, user)
        async with connect_agent(live, token):
            hub = HUB.of(live.app)
            await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
            link = hub.get(uuid.UUID(device_id))
            assert link is not None
            assert not link.direct
            stream = await link.session.open_stream()
            payload = bytes(range(256)) * 8192
            stream.write(payload)
            stream.write_eof()
            assert await stream.read() == payload
        await wait_for(lambda: _status_is(live, device_id, "offline"))


async def test_writes_are_coalesced_into_large_messages_both_ways(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with connect_agent(live, token) as agent:
        hub = HUB.of(live.app)
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        link = hub.get(uuid.UUID(device_id))
        assert link is not None
        agent.message_sizes.clear()
        agent.sent_sizes.clear()
        stream = await link.session.open_stream()
        stream.write(b"x" * 100)
        await wait_for(lambda: _true(bool(agent.message_sizes)))
        # SYN (12 bytes) and the data frame (12 + 100) travel in one message
        assert agent.message_sizes[:1] == [12 + 12 + 100]
        payload = b"y" * (3 * 1024 * 1024)
        stream.write(payload)
        echoed = await stream.readexactly(100 + len(payload))
        assert echoed == b"x" * 100 + payload
        # 64 KiB frames are joined into messages of hundreds of KiB (at most 1 MiB)
        assert max(agent.message_sizes) >= 256 * 1024
        assert max(agent.message_sizes) <= 1024 * 1024
        assert len(agent.message_sizes) < len(payload) // (64 * 1024)
        # the server takes a 2 MiB message: one Data frame of 2 MiB - 12 bytes on the stream
        body = b"z" * (2 * 1024 * 1024 - 12)
        await agent.ws.send(struct.pack(">BBHII", 0, 0, 0, stream.stream_id, len(body)) + body)
        assert await stream.readexactly(len(body)) == body


async def test_the_newest_tunnel_wins_and_the_older_is_closed_4409(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    hub = HUB.of(live.app)
    async with connect_agent(live, token) as first:
        await wait_for(lambda: _true(hub.get(uuid.UUID(device_id)) is not None))
        async with connect_agent(live, token) as second:
            await asyncio.wait_for(first.closed.wait(), 10)
            assert (first.close_code, first.close_reason) == (4409, "superseded")
            assert first.session.close_reason is not None  # GoAway came first
            link = hub.get(uuid.UUID(device_id))
            assert link is not None
            stream = await link.session.open_stream()
            stream.write(b"still here")
            stream.write_eof()
            assert await stream.read() == b"still here"
            await wait_for(lambda: _status_is(live, device_id, "online"))
            assert second.close_code is None
    await wait_for(lambda: _status_is(live, device_id, "offline"))


async def test_unpair_closes_the_tunnel_4401_and_the_next_upgrade_is_401(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with connect_agent(live, token) as agent:
        await wait_for(lambda: _status_is(live, device_id, "online"))
        response = await http.delete(f"{API}/devices/{device_id}", headers=user.headers)
        assert response.status_code == 204
        await asyncio.wait_for(agent.closed.wait(), 10)
        assert (agent.close_code, agent.close_reason) == (4401, "revoked")
    status, body = await _denied(live, {"Authorization": f"Bearer {token}"})
    assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_revoking_the_tunnels_session_token_closes_it_but_not_another_one(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    tokens = (
        await http.get(f"{API}/devices/{device_id}/session-tokens", headers=user.headers)
    ).json()["items"]
    async with connect_agent(live, token) as agent:
        await wait_for(lambda: _status_is(live, device_id, "online"))
        response = await http.delete(
            f"{API}/session-tokens/{tokens[0]['id']}", headers=user.headers
        )
        assert response.status_code == 204
        await asyncio.wait_for(agent.closed.wait(), 10)
        assert (agent.close_code, agent.close_reason) == (4401, "revoked")
    status, _ = await _denied(live, {"Authorization": f"Bearer {token}"})
    assert status == 401


async def test_a_missed_keepalive_marks_reconnecting_then_online_again(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with connect_agent(live, token) as agent:
        await wait_for(lambda: _status_is(live, device_id, "online"))
        agent.deaf = True  # hold received bytes: pings go unanswered
        await wait_for(lambda: _status_is(live, device_id, "reconnecting"))
        agent.deaf = False  # deliver what was held; pings are answered again
        await wait_for(lambda: _status_is(live, device_id, "online"))


async def test_too_many_missed_keepalives_close_the_tunnel(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with connect_agent(live, token) as agent:
        await wait_for(lambda: _status_is(live, device_id, "online"))
        agent.deaf = True
        await asyncio.wait_for(agent.closed.wait(), 20)
        assert agent.close_code == 4408
    await wait_for(lambda: _status_is(live, device_id, "offline"))


async def test_last_seen_is_written_in_one_statement_per_interval_for_all_devices(
    settings: Settings, http_factory: Any
) -> None:
    # a long interval: the test triggers the batch itself, pings run every 0.2 s meanwhile
    quiet = settings.model_copy(update={"tunnel_status_interval": 3600.0})
    async with serve_app(create_app(quiet), quiet) as live, http_factory(live) as http:
        user = await signup(http)
        agents = [await paired_agent_token(http, user) for _ in range(3)]
        hub = HUB.of(live.app)
        statements: list[tuple[str, Any]] = []

        def record(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
            if sql.lstrip().upper().startswith("UPDATE DEVICES") and "last_seen_at" in sql:
                statements.append((sql, params))

        engine = _runtime(live).db.engine.sync_engine
        async with (
            connect_agent(live, agents[0][1]),
            connect_agent(live, agents[1][1]),
            connect_agent(live, agents[2][1]),
        ):
            await wait_for(lambda: _true(hub.count() == 3))
            await asyncio.sleep(1.0)  # several pings answered by each agent
            event.listen(engine, "before_cursor_execute", record)
            try:
                await asyncio.sleep(1.0)  # more pings: none of them writes
                assert statements == []
                await hub.flush()
            finally:
                event.remove(engine, "before_cursor_execute", record)
        assert len(statements) == 1
        _sql, params = statements[0]
        flat = json.dumps(params, default=str)
        for device_id, _ in agents:
            assert device_id.replace("-", "") in flat.replace("-", "")


async def test_start_marks_offline_what_a_previous_run_left_online(settings: Settings) -> None:
    app = create_app(settings)
    async with serve_app(app) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        user = await signup(http)
        device_id, _ = await paired_agent_token(http, user)
        async with _runtime(live).db.transaction() as conn:
            await conn.execute(
                update(devices)
                .where(devices.c.id == uuid.UUID(device_id))
                .values(remote_status="online", last_seen_at=utcnow())
            )
    async with serve_app(create_app(settings), settings) as live:
        assert (await _row(live, device_id))["remote_status"] == "offline"


async def test_a_device_not_seen_for_three_intervals_reads_offline(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, _ = await paired_agent_token(http, user)
    stale = utcnow() - timedelta(seconds=3 * 0.2 + 5)
    async with _runtime(live).db.transaction() as conn:
        await conn.execute(
            update(devices)
            .where(devices.c.id == uuid.UUID(device_id))
            .values(remote_status="online", last_seen_at=stale)
        )
    shown = (await http.get(f"{API}/devices/{device_id}", headers=user.headers)).json()
    assert shown["remote_status"] == "offline"
    renamed = await http.patch(
        f"{API}/devices/{device_id}", json={"name": "renamed"}, headers=user.headers
    )
    assert renamed.json()["remote_status"] == "offline"
    listed = await http.get(
        f"{API}/devices", params={"remote_status": "online"}, headers=user.headers
    )
    assert device_id not in [item["id"] for item in listed.json()["items"]]
    listed = await http.get(
        f"{API}/devices", params={"remote_status": "offline"}, headers=user.headers
    )
    assert device_id in [item["id"] for item in listed.json()["items"]]
    async with _runtime(live).db.transaction() as conn:
        await conn.execute(
            update(devices)
            .where(devices.c.id == uuid.UUID(device_id))
            .values(last_seen_at=utcnow())
        )
    shown = (await http.get(f"{API}/devices/{device_id}", headers=user.headers)).json()
    assert shown["remote_status"] == "online"


async def _true(value: bool) -> bool:
    return value


async def _status_is(live: LiveServer, device_id: str, status: str) -> bool:
    return bool((await _row(live, device_id))["remote_status"] == status)
