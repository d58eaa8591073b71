"""The tunnel registry's leases in batches: renewed and claimed many per round trip.

The registry is the real Redis (the run's server, flushed for each test); the round
trips are counted with Redis's own ``INFO commandstats``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from visiona.cluster import registry as registry_module
from visiona.cluster.registry import TunnelRegistry


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _registry(redis: Redis, name: str, ttl: float = 60.0) -> TunnelRegistry:
    return TunnelRegistry(redis, node_id=name, node_url=f"http://{name}.invalid", ttl=ttl)


async def _script_calls(redis: Redis) -> int:
    """EVALSHA calls the server has run since it started."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_renew_many_extends_every_lease_in_one_round_trip_per_batch(redis: Redis) -> None:
    a = _registry(redis, "node-a")
    devices = [uuid.uuid4() for _ in range(2 * registry_module.BATCH + 200)]
    leases = list((await a.claim_many([(d, time.time_ns()) for d in devices])).values())
    assert len(leases) == len(devices)
    for device in devices:
        await redis.pexpire(f"tun:dev:{device}", 5_000)
    assert await a.renew_many(leases[:1]) == set()  # the script loaded (a first NOSCRIPT)
    before = await _script_calls(redis)
    assert await a.renew_many(leases) == set()
    assert await _script_calls(redis) - before == 3  # 1,200 leases, 500 a call
    ttls = [await redis.pttl(f"tun:dev:{device}") for device in devices]
    assert min(ttls) > 50_000


async def test_renew_many_names_the_leases_another_node_or_nobody_holds(redis: Redis) -> None:
    a, b = _registry(redis, "node-a"), _registry(redis, "node-b")
    kept, taken, expired = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    leases = [
        lease
        for device in (kept, taken, expired)
        if (lease := await a.claim(device, epoch=time.time_ns())) is not None
    ]
    assert len(leases) == 3
    assert await b.claim(taken) is not None  # a newer tunnel on node B
    await redis.delete(f"tun:dev:{expired}")
    assert await a.renew_many(leases) == {taken, expired}
    owners = await a.owners([kept, taken, expired])
    named = {d: o.node_id if o else None for d, o in owners.items()}
    # the expired one is never written back by a renewal
    assert named == {kept: "node-a", taken: "node-b", expired: None}
    assert await a.renew_many([]) == set()


async def test_claim_many_takes_free_and_older_leases_and_keeps_newer_ones(redis: Redis) -> None:
    a, b = _registry(redis, "node-a"), _registry(redis, "node-b")
    free, older, newer = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = time.time_ns()
    assert await b.claim(older, epoch=now - 1_000) is not None
    assert await b.claim(newer, epoch=now + 1_000) is not None
    taken = await a.claim_many([(free, now), (older, now), (newer, now)])
    assert set(taken) == {free, older}
    owners = await a.owners([free, older, newer])
    assert {d: o.node_id if o else None for d, o in owners.items()} == {
        free: "node-a",
        older: "node-a",
        newer: "node-b",
    }
    # what claim_many wrote is a lease like claim's: renewable, with the epoch in it
    assert await a.renew_many(list(taken.values())) == set()
    lease = owners[free]
    assert lease is not None
    assert lease.epoch.startswith(f"{now}-")
    assert 0 < await redis.pttl(f"tun:dev:{free}") <= 60_000


async def test_release_many_deletes_only_this_nodes_leases_and_names_who_holds_after(
    redis: Redis,
) -> None:
    a, b = _registry(redis, "node-a"), _registry(redis, "node-b")
    mine, taken, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    devices = [uuid.uuid4() for _ in range(registry_module.BATCH + 100)]
    claimed = await a.claim_many([(d, time.time_ns()) for d in [mine, taken, *devices]])
    assert await b.claim(taken) is not None  # a newer tunnel on node B
    releases = [(d, claimed[d].value) for d in [mine, taken, *devices]] + [(never, "")]
    await a.release_many(releases[:1])  # the script loaded (a first NOSCRIPT)
    before = await _script_calls(redis)
    after = await a.release_many(releases)
    assert await _script_calls(redis) - before == 2  # 603 releases, 500 a call
    owner = after[taken]
    assert owner is not None
    assert owner.node_id == "node-b"  # B's lease is kept, and named
    assert all(after[d] is None for d in [mine, never, *devices])
    assert await redis.exists(*(f"tun:dev:{d}" for d in [mine, never, *devices])) == 0
    assert await a.release_many([]) == {}
