"""Two real `visiona serve` nodes on one PostgreSQL and one Redis: routing, leases, revocation.

Every node is a separate process on a loopback port chosen by the kernel (port 0);
agents are test agents in this process, each device's local service a small ASGI app.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import pytest

from testkit.device_service import device_app, pattern
from testkit.live import LiveServer, serve_app
from testkit.nodes import TOKEN, Node, cluster_env, spawn_node, start_node, wait_node
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import error_code, signup
from tests.support.tunnel import (
    API,
    connect_agent,
    forward_to,
    paired_agent_token,
    wait_for,
)
from visiona.cluster.forwarding import ORG_HEADER, TOKEN_HEADER, USER_HEADER
from visiona.wire import CLOSE_REVOKED


@pytest.fixture(scope="module")
def env(postgres: PostgresServer, redis_server: RedisServer) -> dict[str, str]:
    """A fresh cluster's environment (its own database and Redis database)."""
    return cluster_env(postgres, redis_server)


@pytest.fixture(scope="module")
def nodes(env: dict[str, str]) -> Iterator[tuple[Node, Node]]:
    """Nodes A and B of one cluster (started together; the last test kills B)."""
    spawned_a = spawn_node("a", {**env, "VISIONA_NODE_ID": "node-a"})
    spawned_b = spawn_node("b", {**env, "VISIONA_NODE_ID": "node-b"})
    started: list[Node] = []
    try:
        started.append(wait_node(spawned_a))
        started.append(wait_node(spawned_b))
        yield started[0], started[1]
    finally:
        for node in started:
            node.stop()
        for _, proc, _ in (spawned_a, spawned_b):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The device's local HTTP service on a loopback port."""
    async with serve_app(device_app()) as service:
        yield service.port


def _as_server(node: Node) -> LiveServer:
    # connect_agent only reads ``ws_url``, which a node has too.
    return cast("LiveServer", node)


async def _status(client: httpx.AsyncClient, headers: dict[str, str], device_id: str) -> Any:
    response = await client.get(f"{API}/devices/{device_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["remote_status"]


async def test_a_device_tunnelled_to_b_is_reached_through_a_both_bodies_streamed(
    nodes: tuple[Node, Node], device_port: int
) -> None:
    a, b = nodes
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
        user = await signup(via_a)
        device_id, token = await paired_agent_token(via_a, user)
        async with connect_agent(_as_server(b), token, forward_to(device_port)):
            async with httpx.AsyncClient(base_url=b.url, timeout=30) as via_b:

                async def on_b() -> bool:
                    r = await via_b.get(
                        f"{API}/devices/{device_id}/proxy/echo/x", headers=user.headers
                    )
                    return r.status_code == 200

                await wait_for(on_b)
            answer = await via_a.post(
                f"{API}/devices/{device_id}/proxy/echo/hello?q=1",
                headers={**user.headers, "X-Request-Id": "req-cluster-1"},
                content=b"ping",
            )
            assert answer.status_code == 200, answer.text
            echoed = answer.json()
            assert echoed["path"] == "/echo/hello"
            assert echoed["query"] == "q=1"
            assert echoed["body"] == "ping"
            assert answer.headers["x-request-id"] == "req-cluster-1"
            headers = {k.lower(): v for k, v in echoed["headers"]}
            assert "authorization" not in headers
            assert not any(k.startswith("x-visiona-") for k in headers)
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert headers["x-forwarded-prefix"] == f"{API}/devices/{device_id}/proxy"
            big = await via_a.get(
                f"{API}/devices/{device_id}/proxy/bytes/{3 * 1024 * 1024}", headers=user.headers
            )
            assert big.status_code == 200
            assert big.content == pattern(3 * 1024 * 1024)
            upload = await via_a.post(
                f"{API}/devices/{device_id}/proxy/upload",
                headers=user.headers,
                content=pattern(2 * 1024 * 1024),
            )
            assert upload.status_code == 201, upload.text
            sent = pattern(2 * 1024 * 1024)
            assert upload.json() == {"sha256": hashlib.sha256(sent).hexdigest(), "size": len(sent)}
            # Another user is refused by the owning node as on one node: 404.
            other = await signup(via_a)
            stranger = await via_a.get(
                f"{API}/devices/{device_id}/proxy/echo/x", headers=other.headers
            )
            assert stranger.status_code == 404
            # B started after A: A's start-up reset does not touch what B holds.
            assert await _status(via_a, user.headers, device_id) == "online"


async def test_internal_route_needs_the_token_and_never_forwards_a_miss(
    nodes: tuple[Node, Node], device_port: int
) -> None:
    a, b = nodes
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=30) as via_a,
        httpx.AsyncClient(base_url=b.url, timeout=30) as via_b,
    ):
        user = await signup(via_a)
        device_id, token = await paired_agent_token(via_a, user)
        internal = f"/internal/v1/devices/{device_id}/proxy/echo/x"
        missing = await via_a.get(internal, headers={USER_HEADER: user.id, ORG_HEADER: user.org_id})
        assert missing.status_code == 401
        assert error_code(missing) == "unauthorized"
        forged = await via_a.get(
            internal,
            headers={TOKEN_HEADER: TOKEN[:-1] + "X", USER_HEADER: user.id, ORG_HEADER: user.org_id},
        )
        assert forged.status_code == 401
        async with connect_agent(_as_server(b), token, forward_to(device_port)):

            async def reached() -> bool:
                r = await via_a.get(f"{API}/devices/{device_id}/proxy/echo/x", headers=user.headers)
                return r.status_code == 200

            await wait_for(reached)
            # A holds no tunnel of the device: its internal route answers offline, even
            # though the registry names B (a forwarded request is never forwarded again).
            miss = await via_a.get(
                internal,
                headers={TOKEN_HEADER: TOKEN, USER_HEADER: user.id, ORG_HEADER: user.org_id},
            )
            assert miss.status_code == 502
            assert error_code(miss) == "device_offline"
            hit = await via_b.get(
                internal,
                headers={TOKEN_HEADER: TOKEN, USER_HEADER: user.id, ORG_HEADER: user.org_id},
            )
            assert hit.status_code == 200


async def test_unpair_on_a_closes_the_tunnel_held_by_b_within_a_second(
    nodes: tuple[Node, Node], device_port: int
) -> None:
    a, b = nodes
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
        user = await signup(via_a)
        device_id, token = await paired_agent_token(via_a, user)
        async with connect_agent(_as_server(b), token, forward_to(device_port)) as agent:

            async def reached() -> bool:
                r = await via_a.get(f"{API}/devices/{device_id}/proxy/echo/x", headers=user.headers)
                return r.status_code == 200

            await wait_for(reached)
            started = time.monotonic()
            gone = await via_a.delete(f"{API}/devices/{device_id}", headers=user.headers)
            assert gone.status_code == 204
            await asyncio.wait_for(agent.closed.wait(), timeout=5)
            assert time.monotonic() - started <= 1.0
            assert agent.close_code == CLOSE_REVOKED


async def test_a_node_starting_keeps_the_other_nodes_devices_online(
    nodes: tuple[Node, Node], env: dict[str, str], device_port: int
) -> None:
    a, _ = nodes
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
        user = await signup(via_a)
        device_id, token = await paired_agent_token(via_a, user)
        async with connect_agent(_as_server(a), token, forward_to(device_port)):

            async def online() -> bool:
                return bool(await _status(via_a, user.headers, device_id) == "online")

            await wait_for(online)
            # In a thread: the test's agent must keep answering keepalives meanwhile.
            c = await asyncio.to_thread(start_node, "c", {**env, "VISIONA_NODE_ID": "node-c"})
            try:
                assert await _status(via_a, user.headers, device_id) == "online"
                async with httpx.AsyncClient(base_url=c.url, timeout=30) as via_c:
                    hit = await via_c.get(
                        f"{API}/devices/{device_id}/proxy/echo/x", headers=user.headers
                    )
                    assert hit.status_code == 200
            finally:
                await asyncio.to_thread(c.stop)


async def test_killed_owner_answers_502_quickly_then_the_device_reconnects_to_a(
    nodes: tuple[Node, Node], device_port: int
) -> None:
    a, b = nodes
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
        user = await signup(via_a)
        device_id, token = await paired_agent_token(via_a, user)
        proxied = f"{API}/devices/{device_id}/proxy/echo/x"
        async with connect_agent(_as_server(b), token, forward_to(device_port)) as agent:

            async def reached() -> bool:
                return (await via_a.get(proxied, headers=user.headers)).status_code == 200

            await wait_for(reached)
            b.kill()
            started = time.monotonic()
            dead = await via_a.get(proxied, headers=user.headers)
            assert dead.status_code == 502
            assert error_code(dead) == "device_offline"
            assert time.monotonic() - started < 5
            await asyncio.wait_for(agent.closed.wait(), timeout=10)
        async with connect_agent(_as_server(a), token, forward_to(device_port)):
            await wait_for(reached)
