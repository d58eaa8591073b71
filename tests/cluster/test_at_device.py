"""The cluster's one primitive: run here, or against the node one hop away holding device X.

The registry is the real Redis (a database of its own per test); the peer is never
called over HTTP here — the primitive only chooses, the callers' tests cover the hop.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from testkit.servers import RedisServer
from visiona.cluster.forwarding import Forwarder
from visiona.cluster.registry import TunnelRegistry
from visiona.cluster.service import Cluster, ClusterNode, Peer

TOKEN = "t" * 32


async def _here() -> str:
    return "here"


async def _there(peer: Peer) -> str:
    return f"there:{peer.owner.node_id}"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{uuid.uuid4().int % 15 + 1}")
    yield client
    await client.aclose()


def _node(redis: Redis, name: str, holding: set[uuid.UUID]) -> ClusterNode:
    registry = TunnelRegistry(redis, node_id=name, node_url=f"http://{name}.invalid", ttl=30.0)
    return ClusterNode(holding.__contains__, registry, Forwarder(TOKEN, 1.0), TOKEN)


async def test_a_single_node_runs_everything_here() -> None:
    alone = Cluster(lambda _device: False)
    assert await alone.at_device(uuid.uuid4(), here=_here, there=_there) == "here"
    assert alone.node_id is None
    assert not alone.accepts(TOKEN)  # no other node may call a single node's internal routes


async def test_a_node_runs_here_what_it_holds_and_one_hop_away_what_another_holds(
    redis: Redis,
) -> None:
    mine, theirs, nobodys = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    a, b = _node(redis, "node-a", {mine}), _node(redis, "node-b", {theirs})
    try:
        await a.registry.claim(mine)
        await b.registry.claim(theirs)
        assert await a.at_device(mine, here=_here, there=_there) == "here"
        assert await a.at_device(theirs, here=_here, there=_there) == "there:node-b"
        assert await b.at_device(mine, here=_here, there=_there) == "there:node-a"
        assert await a.at_device(nobodys, here=_here, there=_there) == "here"  # here says offline
        assert a.accepts(TOKEN)
        assert not a.accepts("x" * 32)
        assert not a.accepts(None)
    finally:
        await a.close()
        await b.close()


async def test_a_lease_naming_this_node_without_its_tunnel_runs_here(redis: Redis) -> None:
    """A lease left by this node (its tunnel just ended) is not a hop to itself."""
    device = uuid.uuid4()
    a = _node(redis, "node-a", set())
    try:
        await a.registry.claim(device)
        assert await a.at_device(device, here=_here, there=_there) == "here"
    finally:
        await a.close()


async def test_a_run_lease_is_held_while_the_work_runs(redis: Redis) -> None:
    work = uuid.uuid4()
    a = _node(redis, "node-a", set())
    try:
        async with a.running(work):
            assert await a.running_of([work, uuid.uuid4()]) == {work}
        assert await a.running_of([work]) == set()
    finally:
        await a.close()
