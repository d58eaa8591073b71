"""The scheduler's lease in Redis and the fencing token the database checks."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis

from tests.support.api import signup
from tests.support.devices import API, create_device, runtime
from tests.support.models import nef, uploaded
from visiona.kit.clock import utcnow
from visiona.rollouts import repository
from visiona.rollouts.lease import LocalLease, RedisLease


async def test_one_node_holds_the_lease_and_a_successor_draws_a_larger_token(
    redis_url: str,
) -> None:
    redis = Redis.from_url(redis_url)
    try:
        a = RedisLease(redis, node_id="node-a", ttl=0.3)
        b = RedisLease(redis, node_id="node-b", ttl=0.3)
        first = await a.hold()
        assert first is not None
        assert await b.hold() is None
        assert await a.hold() == first  # renewed, same token
        await asyncio.sleep(0.6)  # a stops renewing (paused, killed): the lease expires
        second = await b.hold()
        assert second is not None
        assert second > first
        assert await a.hold() is None  # a finds it lost and cannot take it back
        await b.release()
        third = await a.hold()
        assert third is not None
        assert third > second
    finally:
        await redis.aclose()


async def test_a_single_node_always_holds_it() -> None:
    lease = LocalLease()
    assert await lease.hold() == await lease.hold()


async def test_a_stale_schedulers_writes_miss_once_a_newer_one_fenced(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    device = await create_device(client, user)
    model = await uploaded(client, user, nef(1024), chip="kl720")
    created = await client.post(
        f"{API}/rollouts",
        json={"model_id": model["id"], "device_ids": [device["id"]]},
        headers=user.headers,
    )
    rollout_id = uuid.UUID(created.json()["id"])
    device_id = uuid.UUID(str(device["id"]))
    db = runtime(app).db
    old, new = 2**62, 2**62 + 1  # above any token the app's own scheduler drew
    async with db.transaction() as conn:
        assert await repository.fence(conn, rollout_id, old) is not None
        assert await repository.fence(conn, rollout_id, new) is not None
        assert await repository.fence(conn, rollout_id, old) is None  # never lowered
        await repository.assign_batch(conn, rollout_id, new, batch=0, size=1, now=utcnow())
        stale = await repository.set_device(
            conn,
            rollout_id,
            device_id,
            old,
            from_states=("queued", "waiting"),
            now=utcnow(),
            state="transferring",
        )
        assert stale is False
        current = await repository.set_device(
            conn,
            rollout_id,
            device_id,
            new,
            from_states=("queued", "waiting"),
            now=utcnow(),
            state="cancelled",
        )
        assert current is True
