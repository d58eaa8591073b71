"""Admission across two real nodes: the busy report lands on one node, the tunnel is on the other.

With ``VISIONA_PROXY_DURING_DEPLOY=refuse`` the node holding the tunnel refuses calls
to a busy device from its own memory; the agent's status report may be routed to
another node, which only writes the database, so each node re-reads the busy flags
of its tunnels' devices once per status interval.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import cast

import httpx
import pytest

from testkit.device_service import device_app
from testkit.live import LiveServer, serve_app
from testkit.nodes import Node, cluster_env, running_nodes
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import signup
from tests.support.tunnel import API, connect_agent, forward_to, paired_agent_token, wait_for


@pytest.fixture(scope="module")
def nodes(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[list[Node]]:
    """Nodes A and B refusing proxied calls to busy devices."""
    env = cluster_env(postgres, redis_server, proxy_during_deploy="refuse")
    with running_nodes(env, "a", "b") as started:
        yield started


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The device's local HTTP service on a loopback port."""
    async with serve_app(device_app()) as service:
        yield service.port


async def test_a_busy_report_on_one_node_refuses_calls_on_the_node_holding_the_tunnel(
    nodes: list[Node], device_port: int
) -> None:
    a, b = nodes
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=30) as via_a,
        httpx.AsyncClient(base_url=b.url, timeout=30) as via_b,
    ):
        user = await signup(via_a)
        device_id, token = await paired_agent_token(via_a, user)
        agent_headers = {"Authorization": f"Bearer {token}"}
        url = f"{API}/devices/{device_id}/proxy/echo/x"
        async with connect_agent(cast("LiveServer", b), token, forward_to(device_port)):

            async def status_is(code: int) -> bool:
                return (await via_a.get(url, headers=user.headers)).status_code == code

            await wait_for(lambda: status_is(200), limit=30)
            report = await via_a.post(  # lands on A; the tunnel is on B
                f"{API}/agent/status",
                json={"usb_status": "online", "busy": True},
                headers=agent_headers,
            )
            assert report.status_code == 204
            await wait_for(lambda: status_is(429), limit=30)
            refused = await via_b.get(url, headers=user.headers)
            assert refused.status_code == 429
            assert refused.json()["error"]["reason"] == "busy"
            idle = await via_a.post(
                f"{API}/agent/status",
                json={"usb_status": "online", "busy": False},
                headers=agent_headers,
            )
            assert idle.status_code == 204
            await wait_for(lambda: status_is(200), limit=30)
