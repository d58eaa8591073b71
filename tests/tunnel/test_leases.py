"""A cluster node's lease round: every tunnel's lease renewed and session token re-checked
by one node-wide task, in chunks, instead of one task per tunnel.

One real node (`visiona serve`'s app in process) on PostgreSQL and Redis with the internal
token set, so the registry is on; "another node" is a second registry on the same Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from testkit.live import LiveServer
from tests.support.api import signup
from tests.support.settings import make_settings
from tests.support.tunnel import FakeAgent, connect_agent, paired_agent_token, wait_for
from visiona.cluster.registry import TunnelRegistry
from visiona.kit.clock import utcnow
from visiona.kit.runtime import Runtime
from visiona.kit.schema import devices
from visiona.kit.settings import Settings
from visiona.kit.tokens import hash_token
from visiona.tokens import repository as tokens_repository
from visiona.tunnel import hub as hub_module
from visiona.tunnel.dependencies import HUB
from visiona.tunnel.hub import TunnelHub
from visiona.wire import CLOSE_REVOKED, CLOSE_SUPERSEDED

#: A ping interval no lease round of the node's own loop reaches within a test, for the
#: tests that run rounds themselves (lease TTL: three intervals plus the timeout).
MANUAL = 60.0


def _cluster_settings(pg_url: str, redis_url: str, tmp_path: Path, interval: float) -> Settings:
    return make_settings(
        database_url=pg_url,
        data_dir=tmp_path,
        redis_url=redis_url,
        internal_token="i" * 32,
        node_id="node-a",
        tunnel_status_interval=0.2,
        tunnel_ping_interval=interval,
        tunnel_ping_timeout=0.5,
    )


@pytest.fixture
def interval() -> float:
    """The node's ping (and lease round) interval: short, so a round comes within a test."""
    return 0.2


@pytest.fixture
def settings(pg_url: str, redis_url: str, tmp_path: Path, interval: float) -> Settings:
    """A cluster node: PostgreSQL, Redis and the internal token."""
    return _cluster_settings(pg_url, redis_url, tmp_path, interval)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _hub(live: LiveServer) -> TunnelHub:
    return HUB.of(live.app)


def _runtime(live: LiveServer) -> Runtime:
    runtime: Runtime = live.app.state.runtime
    return runtime


async def _connected(
    live: LiveServer, http: httpx.AsyncClient, stack: AsyncExitStack, count: int
) -> list[tuple[uuid.UUID, str, FakeAgent]]:
    """``count`` paired devices with their agent connected and their lease taken."""
    user = await signup(http)
    agents = []
    for _ in range(count):
        device_id, token = await paired_agent_token(http, user)
        agent = await stack.enter_async_context(connect_agent(live, token))
        agents.append((uuid.UUID(device_id), token, agent))
    hub = _hub(live)
    registry = hub.registry
    assert registry is not None

    async def all_leased() -> bool:
        owners = await registry.owners([device for device, _, _ in agents])
        return all(o is not None and o.node_id == "node-a" for o in owners.values())

    await wait_for(all_leased)
    return agents


async def _revoke_quietly(live: LiveServer, token: str) -> None:
    """Revoke the session token in the database only: no hook, no pub/sub message (as
    if the message was lost)."""
    async with _runtime(live).db.transaction() as conn:
        assert await tokens_repository.revoke_live_session_token(conn, hash_token(token), utcnow())


@pytest.mark.parametrize("interval", [MANUAL])
async def test_one_round_renews_every_lease_of_the_node_in_chunks(
    live: LiveServer,
    http: httpx.AsyncClient,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "LEASE_CHUNK", 4)  # 10 tunnels: three chunks
    hub = _hub(live)
    registry = hub.registry
    assert registry is not None
    batches: list[int] = []
    renew_many = registry.renew_many

    async def counted(leases: list[object]) -> set[uuid.UUID]:
        batches.append(len(leases))
        return await renew_many(leases)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "renew_many", counted)
    async with AsyncExitStack() as stack:
        agents = await _connected(live, http, stack, 10)
        keys = [f"tun:dev:{device}" for device, _, _ in agents]
        for key in keys:
            await redis.pexpire(key, 5_000)
        await hub.lease_round()
        assert batches == [4, 4, 2]
        assert min([await redis.pttl(key) for key in keys]) > 150_000  # the TTL: 180.5 s
        assert all(not agent.closed.is_set() for _, _, agent in agents)
        assert hub.count() == 10


async def test_a_lease_another_node_took_closes_the_tunnel_at_the_next_round(
    live: LiveServer, http: httpx.AsyncClient, redis: Redis
) -> None:
    other = TunnelRegistry(redis, node_id="node-b", node_url="http://node-b.invalid", ttl=30.0)
    async with AsyncExitStack() as stack:
        (taken, _, lost), (kept, _, stays) = await _connected(live, http, stack, 2)
        assert await other.claim(taken, epoch=time.time_ns()) is not None  # newer, elsewhere
        await asyncio.wait_for(lost.closed.wait(), 5)  # the node's own loop, 0.2 s
        assert lost.close_code == CLOSE_SUPERSEDED
        hub = _hub(live)
        await wait_for(lambda: _true(hub.get(taken) is None))
        owner = await other.owner(taken)
        assert owner is not None
        assert owner.node_id == "node-b"  # not released by node A on its way out
        await asyncio.sleep(0.5)  # more rounds: the other tunnel and its lease stay
        assert not stays.closed.is_set()
        owner = await other.owner(kept)
        assert owner is not None
        assert owner.node_id == "node-a"


async def test_a_revocation_whose_message_was_lost_closes_the_tunnel_at_the_next_round(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    async with AsyncExitStack() as stack:
        (_, token, revoked), (_, _, stays) = await _connected(live, http, stack, 2)
        await _revoke_quietly(live, token)
        await asyncio.wait_for(revoked.closed.wait(), 5)
        assert revoked.close_code == CLOSE_REVOKED
        await asyncio.sleep(0.5)
        assert not stays.closed.is_set()


@pytest.mark.parametrize("interval", [MANUAL])
async def test_a_lease_lost_to_nobody_is_claimed_again(
    live: LiveServer, http: httpx.AsyncClient, redis: Redis
) -> None:
    """Redis restarted empty, or the lease expired while Redis was away: taken again."""
    hub = _hub(live)
    async with AsyncExitStack() as stack:
        [(device, _, agent)] = await _connected(live, http, stack, 1)
        await redis.delete(f"tun:dev:{device}")
        await hub.lease_round()
        assert hub.registry is not None
        owner = await hub.registry.owner(device)
        assert owner is not None
        assert owner.node_id == "node-a"
        assert not agent.closed.is_set()
        await hub.lease_round()  # the new lease is the one renewed
        assert await redis.pttl(f"tun:dev:{device}") > 150_000


@pytest.mark.parametrize("interval", [MANUAL])
async def test_redis_away_keeps_the_tunnels_with_one_warning_a_round(
    live: LiveServer,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(hub_module, "LEASE_CHUNK", 2)
    hub = _hub(live)
    registry = hub.registry
    assert registry is not None

    async def away(leases: object) -> set[uuid.UUID]:
        raise ConnectionError("redis away")

    async with AsyncExitStack() as stack:
        agents = await _connected(live, http, stack, 5)
        monkeypatch.setattr(registry, "renew_many", away)
        (_, token, revoked) = agents[0]
        await _revoke_quietly(live, token)
        caplog.set_level(logging.INFO)
        await hub.lease_round()
        await hub.lease_round()
        warnings = [r for r in caplog.records if "not renewed" in r.getMessage()]
        assert len(warnings) == 2  # one a round, not one a tunnel (nor a chunk)
        assert "ConnectionError" in warnings[0].getMessage()
        # the revocation re-check still ran: the revoked tunnel closed, the others stay
        await asyncio.wait_for(revoked.closed.wait(), 5)
        assert revoked.close_code == CLOSE_REVOKED
        assert all(not agent.closed.is_set() for _, _, agent in agents[1:])
        assert hub.count() == 4


async def test_one_lease_task_for_the_node_whatever_its_tunnels(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    async with AsyncExitStack() as stack:
        await _connected(live, http, stack, 10)
        await asyncio.sleep(0.5)  # a few rounds
        tasks = asyncio.all_tasks()
    lease_loops = [t for t in tasks if "TunnelHub._lease_loop" in repr(t.get_coro())]
    assert len(lease_loops) == 1


async def _true(value: bool) -> bool:
    return value


async def test_tunnels_ending_at_once_release_their_leases_in_shared_script_calls(
    live: LiveServer,
    http: httpx.AsyncClient,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = _hub(live)
    registry = hub.registry
    assert registry is not None
    batches: list[int] = []
    release_many = registry.release_many

    async def counted(releases: list[tuple[uuid.UUID, str]]) -> object:
        batches.append(len(releases))
        return await release_many(releases)

    monkeypatch.setattr(registry, "release_many", counted)
    async with AsyncExitStack() as stack:
        agents = await _connected(live, http, stack, 12)
        for _, _, agent in agents:  # a network blip: every connection gone at once
            agent.ws.transport.abort()

        async def all_gone() -> bool:
            return hub.count() == 0 and sum(batches) == len(agents)

        await wait_for(all_gone)
    assert len(batches) < len(agents)  # shared calls, not one per tunnel
    assert await redis.exists(*(f"tun:dev:{device}" for device, _, _ in agents)) == 0


async def test_redis_away_at_the_release_is_one_warning_for_the_batch(
    live: LiveServer,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = _hub(live)
    registry = hub.registry
    assert registry is not None

    async def away(releases: object) -> object:
        raise ConnectionError("redis away")

    async with AsyncExitStack() as stack:
        agents = await _connected(live, http, stack, 6)
        monkeypatch.setattr(registry, "release_many", away)
        caplog.set_level(logging.WARNING)
        for _, _, agent in agents:
            agent.ws.transport.abort()

        async def all_gone() -> bool:
            return hub.count() == 0

        await wait_for(all_gone)
        await asyncio.sleep(0.3)  # the status batch: every device written offline
    warnings = [r.getMessage() for r in caplog.records if "not released" in r.getMessage()]
    assert 1 <= len(warnings) < len(agents)
    assert all("ConnectionError" in warning for warning in warnings)
    ids = [device for device, _, _ in agents]
    async with _runtime(live).db.reading() as conn:
        statuses = await conn.scalars(select(devices.c.remote_status).where(devices.c.id.in_(ids)))
        assert set(statuses) == {"offline"}  # the lease's fate unknown: offline, as before
