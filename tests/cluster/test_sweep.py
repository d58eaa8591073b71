"""Unfinished deployments left by a stopped node: the sweep and the single-node reset.

On SQLite and PostgreSQL (the schema by migrations); the run leases in the real Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from testkit.servers import RedisServer
from tests.support.api import signup
from tests.support.deployments import device_and_model
from visiona.cluster.forwarding import Forwarder
from visiona.cluster.registry import TunnelRegistry
from visiona.cluster.service import ClusterNode
from visiona.deployments import repository
from visiona.deployments.recovery import NODE_LOST, RESTARTED, fail_left_unfinished, sweep
from visiona.deployments.schemas import DeploymentStatus
from visiona.kit.clock import utcnow
from visiona.kit.runtime import Runtime

TTL = 30.0


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[ClusterNode]:
    """A node's cluster view on a Redis database of its own test."""
    redis = Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{uuid.uuid4().int % 15 + 1}")
    registry = TunnelRegistry(redis, node_id="node-x", node_url="http://127.0.0.1:9", ttl=TTL)
    node = ClusterNode(lambda _device: False, registry, Forwarder("t" * 32, 1.0), "t" * 32)
    yield node
    await node.close()
    await registry.close()
    await redis.aclose()


async def _records(
    app: FastAPI, client: httpx.AsyncClient, statuses: list[tuple[str, float]]
) -> list[uuid.UUID]:
    """Deployments with the given ``(status, age in seconds)``, one device each (a device
    has at most one ``pending``/``transferring`` deployment: the admission rule)."""
    user = await signup(client)
    runtime: Runtime = app.state.runtime
    ids = []
    for status, age in statuses:
        device_id, _, model_id, _ = await device_and_model(client, user, 1_000)
        async with runtime.db.transaction() as conn:
            then = utcnow() - timedelta(seconds=age)
            record = await repository.insert_deployment(
                conn,
                deployment_id=uuid.uuid4(),
                owner_user_id=uuid.UUID(user.id),
                org_id=uuid.UUID(user.org_id),
                device_id=uuid.UUID(device_id),
                model_id=uuid.UUID(model_id),
                now=then,
            )
            assert record is not None
            if status != "pending":
                await repository.set_status(
                    conn, record.id, status=DeploymentStatus(status), now=then, error=None
                )
            ids.append(record.id)
    return ids


async def _status(app: FastAPI, deployment_id: uuid.UUID) -> tuple[str, str | None]:
    runtime: Runtime = app.state.runtime
    async with runtime.db.transaction() as conn:
        record = await repository.get_deployment(conn, deployment_id)
    assert record is not None
    return record.status.value, record.error


async def test_the_sweep_fails_old_unfinished_records_no_node_runs(
    app: FastAPI, client: httpx.AsyncClient, cluster: ClusterNode
) -> None:
    old_orphan, old_pending, running, recent, done = await _records(
        app,
        client,
        [
            ("transferring", 2 * TTL),
            ("pending", 2 * TTL),
            ("transferring", 2 * TTL),
            ("transferring", 1),
            ("succeeded", 2 * TTL),
        ],
    )
    await cluster.registry.claim_run(running)
    runtime: Runtime = app.state.runtime
    assert await sweep(runtime.db, cluster, TTL) == 2
    assert await _status(app, old_orphan) == ("failed", NODE_LOST)
    assert await _status(app, old_pending) == ("failed", NODE_LOST)
    assert await _status(app, running) == ("transferring", None)  # a live node runs it
    assert await _status(app, recent) == ("transferring", None)  # within the lease TTL
    assert await _status(app, done) == ("succeeded", None)
    await cluster.registry.release_run(running)
    assert await sweep(runtime.db, cluster, TTL) == 1
    assert await _status(app, running) == ("failed", NODE_LOST)


async def test_a_single_node_fails_at_start_up_what_its_previous_run_left(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    left = await _records(app, client, [("transferring", 1), ("pending", 0.5), ("failed", 5)])
    runtime: Runtime = app.state.runtime
    assert await fail_left_unfinished(runtime.db) == 2
    assert await _status(app, left[0]) == ("failed", RESTARTED)
    assert await _status(app, left[1]) == ("failed", RESTARTED)
    assert (await _status(app, left[2]))[0] == "failed"
