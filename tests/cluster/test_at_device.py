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
from visiona.cluster.forwarding import Forwarder, NodeUnreachableError, OwnerMovedError
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


async def test_a_bodiless_proxy_reuses_the_owner_read_a_moment_ago(redis: Redis) -> None:
    """With ``reuse``, the owner read less than OWNER_REUSE seconds ago is asked again
    without a registry read; without it, the registry decides every time."""
    device = uuid.uuid4()
    a, b = _node(redis, "node-a", set()), _node(redis, "node-b", {device})
    try:
        lease = await b.registry.claim(device)
        assert lease is not None
        assert await a.at_device(device, here=_here, there=_there, reuse=True) == "there:node-b"
        await b.registry.release(lease)  # the registry no longer names node-b
        assert await a.at_device(device, here=_here, there=_there, reuse=True) == "there:node-b"
        assert await a.at_device(device, here=_here, there=_there) == "here"
        # the fresh read found no owner: nothing is reused any more
        assert await a.at_device(device, here=_here, there=_there, reuse=True) == "here"
    finally:
        await a.close()
        await b.close()


async def test_a_remembered_owner_that_moved_is_replaced_by_the_registrys(redis: Redis) -> None:
    """The remembered node answers it does not hold the device: the request runs once
    more against the owner the registry names now, which is remembered instead."""
    device = uuid.uuid4()
    a = _node(redis, "node-a", set())
    b, c = _node(redis, "node-b", set()), _node(redis, "node-c", {device})
    asked: list[tuple[str, bool]] = []

    async def there(peer: Peer) -> str:
        asked.append((peer.owner.node_id, peer.remembered))
        if peer.owner.node_id == "node-b":
            raise OwnerMovedError()
        return f"there:{peer.owner.node_id}"

    try:
        await b.registry.claim(device)
        assert await a.at_device(device, here=_here, there=_there) == "there:node-b"
        await c.registry.claim(device)  # the agent moved to node-c
        assert await a.at_device(device, here=_here, there=there, reuse=True) == "there:node-c"
        assert asked == [("node-b", True), ("node-c", False)]
        assert await a.at_device(device, here=_here, there=there, reuse=True) == "there:node-c"
        assert asked[-1] == ("node-c", True)
    finally:
        for node in (a, b, c):
            await node.close()


async def test_a_remembered_owner_that_is_unreachable_is_forgotten(redis: Redis) -> None:
    device = uuid.uuid4()
    a, b = _node(redis, "node-a", set()), _node(redis, "node-b", {device})

    async def unreachable(_peer: Peer) -> str:
        raise NodeUnreachableError()

    try:
        lease = await b.registry.claim(device)
        assert lease is not None
        assert await a.at_device(device, here=_here, there=_there) == "there:node-b"
        await b.registry.release(lease)
        with pytest.raises(NodeUnreachableError):
            await a.at_device(device, here=_here, there=unreachable, reuse=True)
        assert await a.at_device(device, here=_here, there=_there, reuse=True) == "here"
    finally:
        await a.close()
        await b.close()
