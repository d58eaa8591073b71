"""The node link under faults, with real node processes, nginx and the real agent.

Every test starts its own nodes A and B (one is killed or restarted). The real agent
(:class:`visiona.agent.runner.Agent`, in this process) holds its tunnel on B, reached
through nginx (whose upstream is B alone: a restarted B comes back on the same port);
requests are sent to A, which forwards them over its link to B.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from testkit.device_service import device_app
from testkit.live import serve_app
from testkit.nginx import NginxServer
from testkit.nodes import Node, cluster_env, running_nodes, spawn_node, wait_node
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import User, error_code, signup
from tests.support.devices import pairing_token
from tests.support.tunnel import API, wait_for
from visiona.agent.runner import Agent, AgentOptions
from visiona.cluster.registry import KEY_PREFIX

REFUSED_HERE = "cluster: link from"
REFUSED_THERE = "cluster: link to"


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read a response body to its end."""
    async for _ in body:
        pass


@pytest.fixture
def env(postgres: PostgresServer, redis_server: RedisServer) -> dict[str, str]:
    """A fresh cluster's environment (lease TTL 4 s: a dead node's lease outlives it)."""
    return cluster_env(
        postgres,
        redis_server,
        tunnel_ping_interval="1.0",
        tunnel_ping_timeout="1.0",
        proxy_response_timeout="30",
    )


@pytest.fixture
def nodes(env: dict[str, str]) -> Iterator[tuple[Node, Node]]:
    """Nodes A and B."""
    with running_nodes(env, "a", "b") as (a, b):
        yield a, b


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The device's local HTTP service on a loopback port."""
    async with serve_app(device_app()) as service:
        yield service.port


class AgentOnB:
    """The real agent, connected to B through nginx, and the device it paired."""

    def __init__(self, agent: Agent, device_id: str, redis_url: str) -> None:
        """Hold the running agent."""
        self.agent = agent
        self.device_id = device_id
        self._redis_url = redis_url

    async def lease(self) -> bytes | None:
        """The device's registry entry, raw (node, URL and epoch)."""
        redis = Redis.from_url(self._redis_url)
        try:
            raw = await redis.get(f"{KEY_PREFIX}{self.device_id}")
        finally:
            await redis.aclose()
        return raw.encode() if isinstance(raw, str) else raw


@pytest.fixture
async def on_b(
    nodes: tuple[Node, Node], env: dict[str, str], device_port: int, tmp_path: Path
) -> AsyncIterator[tuple[AgentOnB, User]]:
    """The real agent paired by a new user, its tunnel on B (through nginx)."""
    _, b = nodes
    lb = NginxServer([f"127.0.0.1:{b.port}"])
    lb.start()
    stop = asyncio.Event()
    running: asyncio.Task[int] | None = None
    try:
        async with httpx.AsyncClient(base_url=b.url, timeout=30) as via_b:
            user = await signup(via_b)
            options = AgentOptions(
                server=lb.url,
                forward_host="127.0.0.1",
                forward_port=device_port,
                session_file=tmp_path / "session.json",
                pairing_token=(await pairing_token(via_b, user))["token"],
                serial_number=f"SN-{uuid.uuid4().hex[:10]}",
                usb_poll_interval=0.2,
            )
            agent = Agent(options, stable_after=0.0)
            running = asyncio.create_task(agent.run(stop))
            await asyncio.wait_for(agent.connected.wait(), 60)
            device_id = (await via_b.get(f"{API}/devices", headers=user.headers)).json()["items"][
                0
            ]["id"]
        held = AgentOnB(agent, device_id, env["VISIONA_REDIS_URL"])

        async def leased() -> bool:
            return b'"node-b"' in (await held.lease() or b"")

        await wait_for(leased)
        yield held, user
    finally:
        stop.set()
        if running is not None:
            await asyncio.wait_for(running, 30)
        lb.cleanup()


async def test_b_killed_mid_exchange_ends_the_forwarded_requests_promptly(
    nodes: tuple[Node, Node], on_b: tuple[AgentOnB, User]
) -> None:
    a, b = nodes
    held, user = on_b
    proxied = f"{API}/devices/{held.device_id}/proxy"
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
        assert (await via_a.get(f"{proxied}/echo/x", headers=user.headers)).status_code == 200
        # One request waits for its answer's head (the device answers after 2.5 s),
        # one has its head and the first part of a body the device never finishes.
        waiting = asyncio.create_task(via_a.get(f"{proxied}/slow-head", headers=user.headers))
        async with via_a.stream("GET", f"{proxied}/stall", headers=user.headers) as stalled:
            assert stalled.status_code == 200
            body = stalled.aiter_raw()
            assert await anext(body) == b"first part;"
            b.kill()
            # Both end well before the device or any timeout would end them.
            with pytest.raises(httpx.TransportError):
                await asyncio.wait_for(_drain(body), 10)
        before_head = await asyncio.wait_for(waiting, 10)
        assert before_head.status_code == 502
        assert error_code(before_head) == "device_offline"
        # A goes on serving: the dead node's lease still names it, so 502 at once.
        again = await via_a.get(f"{proxied}/echo/x", headers=user.headers)
        assert again.status_code == 502
        me = await via_a.get(f"{API}/auth/me", headers=user.headers)
        assert me.status_code == 200


async def test_b_restarted_is_linked_again_and_the_next_forwarded_request_succeeds(
    nodes: tuple[Node, Node], env: dict[str, str], on_b: tuple[AgentOnB, User]
) -> None:
    a, b = nodes
    held, user = on_b
    echo = f"{API}/devices/{held.device_id}/proxy/echo/x"
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
        assert (await via_a.get(echo, headers=user.headers)).status_code == 200
        old_lease = await held.lease()
        b.kill()
        assert (await via_a.get(echo, headers=user.headers)).status_code == 502
        # B again, on the same port (nginx and the agent know that one), a new process.
        restarted = await asyncio.to_thread(
            lambda: wait_node(spawn_node("b", {**env, "VISIONA_NODE_ID": "node-b"}, port=b.port))
        )
        try:

            async def claimed_again() -> bool:
                lease = await held.lease()
                return lease is not None and lease != old_lease and b'"node-b"' in lease

            await wait_for(claimed_again, limit=60)
            answer = await via_a.get(echo, headers={**user.headers, "X-Request-Id": "req-after"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["path"] == "/echo/x"
            assert answer.headers["x-request-id"] == "req-after"
        finally:
            await asyncio.to_thread(restarted.stop)
        assert "cluster: link to" in a.log.read_text()


async def test_a_node_with_another_token_is_refused_and_each_side_logs_it_once(
    nodes: tuple[Node, Node], env: dict[str, str], on_b: tuple[AgentOnB, User]
) -> None:
    _, b = nodes
    held, user = on_b
    echo = f"{API}/devices/{held.device_id}/proxy/echo/x"
    wrong = {
        **env,
        "VISIONA_INTERNAL_TOKEN": "another-token-0123456789",
        "VISIONA_NODE_ID": "node-c",
    }
    c = await asyncio.to_thread(lambda: wait_node(spawn_node("c", wrong)))
    try:
        async with httpx.AsyncClient(base_url=c.url, timeout=30) as via_c:
            # C keeps forwarding; after each refusal it waits (1 s, then 2 s) before it
            # dials B again. Every request meanwhile is a 502, none hangs.
            async def dialled_twice() -> bool:
                refused = await via_c.get(echo, headers=user.headers)
                assert refused.status_code == 502
                assert error_code(refused) == "device_offline"
                return b.log.read_text().count("WebSocket /internal/v1/link") >= 2

            await wait_for(dialled_twice, limit=30)
    finally:
        await asyncio.to_thread(c.stop)
    c_log, b_log = c.log.read_text(), b.log.read_text()
    refused_lines = [line for line in c_log.splitlines() if "refused" in line and "WARNING" in line]
    assert len(refused_lines) == 1, refused_lines
    assert f"link to {b.url} refused" in refused_lines[0]
    b_refusals = [line for line in b_log.splitlines() if REFUSED_HERE in line and "refused" in line]
    assert len(b_refusals) == 1, b_refusals
    assert "another-token" not in c_log + b_log
    assert env["VISIONA_INTERNAL_TOKEN"] not in c_log + b_log
