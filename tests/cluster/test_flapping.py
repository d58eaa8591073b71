"""Agents flapping between two nodes: the newest tunnel's status always wins.

Each agent leaves one node and comes up on the other at the same moment, again and
again (a flaky network, a balancer moving it). The old node's "offline" and the new
node's "online" race to the database; the tunnel epoch in every status write makes
the newest tunnel win whatever order they land in (open-balena-vpn #287/#290: devices
read offline for hours from exactly this).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest

from testkit.nodes import Node, cluster_env, running_nodes
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import User, signup
from tests.support.tunnel import API, connect_agent, paired_agent_token, wait_for

AGENTS = 6
ROUNDS = 6


async def _statuses(http: httpx.AsyncClient, user: User) -> dict[str, str]:
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    return {d["id"]: d["remote_status"] for d in items}


async def _flap(nodes: list[Node], token: str) -> contextlib.AsyncExitStack:
    """Move one agent's tunnel from node to node; return the stack holding the last one."""
    current = contextlib.AsyncExitStack()
    await current.enter_async_context(connect_agent(cast(Any, nodes[0]), token))
    for round_ in range(1, ROUNDS + 1):
        following = contextlib.AsyncExitStack()
        node = nodes[round_ % 2]
        opened = connect_agent(cast(Any, node), token)
        # the old tunnel drops as the new one comes up
        await asyncio.gather(current.aclose(), following.enter_async_context(opened))
        current = following
    return current


@pytest.fixture
def nodes(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[list[Node]]:
    """Nodes A and B of a fresh cluster (no balancer: the agents pick the node)."""
    # intervals of 1 s: a busy machine delaying a ping must not make a device read
    # offline by the stale-read rule (three intervals without a sign of life)
    env = cluster_env(
        postgres,
        redis_server,
        tunnel_status_interval="1.0",
        tunnel_ping_interval="1.0",
        tunnel_ping_timeout="1.0",
    )
    with running_nodes(env, "a", "b") as started:
        yield started


async def test_agents_flapping_between_two_nodes_end_online_and_stay_so(nodes: list[Node]) -> None:
    async with httpx.AsyncClient(base_url=nodes[0].url, timeout=30) as http:
        user = await signup(http)
        tokens = [(await paired_agent_token(http, user))[1] for _ in range(AGENTS)]
        stacks = await asyncio.gather(*(_flap(nodes, token) for token in tokens))
        try:

            async def all_online() -> bool:
                return set((await _statuses(http, user)).values()) == {"online"}

            await wait_for(all_online, limit=30)
            # several status intervals and lease renewals later: still online
            for _ in range(10):
                st = await _statuses(http, user)
                assert set(st.values()) == {"online"}
                await asyncio.sleep(0.4)
        finally:
            for stack in stacks:
                await stack.aclose()

        async def all_offline() -> bool:
            return set((await _statuses(http, user)).values()) == {"offline"}

        await wait_for(all_offline, limit=30)
