"""TCP forwards in a cluster of two real nodes: served by the node holding the tunnel.

The node-to-node hop for forwards is not built yet (it will ride the node link); until
then a forward asked of the other node is refused before the upgrade with a message
saying so, never a hang nor a misleading "not connected".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import cast

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from testkit.live import LiveServer
from testkit.servers import PostgresServer, RedisServer
from tests.agent.test_tcp import EchoService
from tests.cluster.nodes import Node, cluster_env, running_nodes
from tests.support.api import signup
from tests.tunnel.support import API, connect_agent, paired_agent_token, wait_for
from tests.tunnel.test_tcp_endpoints import _dispatcher


@pytest.fixture(scope="module")
def nodes(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[list[Node]]:
    """Nodes A and B."""
    with running_nodes(cluster_env(postgres, redis_server), "a", "b") as started:
        yield started


def _ws(node: Node, path: str) -> str:
    return f"ws://127.0.0.1:{node.port}{path}"


async def test_a_forward_is_served_by_the_owner_and_the_other_node_says_why_not(
    nodes: list[Node],
) -> None:
    a, b = nodes
    echo = EchoService()
    await echo.start()
    try:
        async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
            user = await signup(via_a)
            device_id, token = await paired_agent_token(via_a, user)
            async with connect_agent(cast("LiveServer", b), token, _dispatcher([echo.port])):

                async def online() -> bool:
                    body = (
                        await via_a.get(f"{API}/devices/{device_id}", headers=user.headers)
                    ).json()
                    return bool(body["remote_status"] == "online")

                await wait_for(online, limit=30)
                path = f"{API}/devices/{device_id}/tcp/{echo.port}"
                async with connect(_ws(b, path), additional_headers=user.headers) as ws:
                    assert await ws.recv() == b"hello\n"
                with pytest.raises(InvalidStatus) as info:
                    async with connect(_ws(a, path), additional_headers=user.headers):
                        pass
                response = info.value.response
                assert response.status_code == 502
                error = json.loads(response.body or b"{}")["error"]
                assert error["code"] == "device_offline"
                assert "another node of the cluster" in error["message"]
    finally:
        await echo.stop()
