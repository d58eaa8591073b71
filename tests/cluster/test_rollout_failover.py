"""The node driving a rollout is SIGKILLed mid-batch: the other node takes its lease
and completes the rollout, and every agent ran the model exactly once.

Two nodes behind nginx (PostgreSQL, Redis); eight real agents (in this process) enrol
through the balancer with one key, so their tunnels spread over both nodes. Each
agent's deploy hook takes a second and then appends the model id to its own file, so
transfers are in flight when the leader dies; a hook the agent killed (the tunnel died
midway: that deployment did not happen) records nothing. Counted at the agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from testkit.nodes import Balanced, balanced_nodes
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import signup
from tests.support.models import nef, uploaded
from tests.support.tunnel import API, wait_for
from visiona.agent.runner import Agent, AgentOptions
from visiona.rollouts.lease import LEADER_KEY

AGENTS = 8
# The hook takes a second, then records the model: a hook the agent killed (its tunnel
# died midway, so the deployment did not happen) records nothing.
RECORD = (
    "import os, sys, time\n"
    "time.sleep(1.0)\n"
    "open(sys.argv[1], 'a').write(os.environ['VISIONA_MODEL_ID'] + '\\n')\n"
)


@pytest.fixture
def cluster(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[Balanced]:
    """Nodes A and B and nginx in front; two transfers at a time per node."""
    with balanced_nodes(
        postgres, redis_server, rollout_interval="0.3", rollout_max_transfers="2"
    ) as balanced:
        yield balanced


async def _leader(cluster: Balanced) -> str:
    redis = Redis.from_url(cluster.env["VISIONA_REDIS_URL"])
    try:
        raw = await redis.get(LEADER_KEY)
    finally:
        await redis.aclose()
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return text.split(":", 1)[0]


async def test_the_leader_killed_mid_batch_the_other_node_completes_exactly_once(
    cluster: Balanced, device_port: int, tmp_path: Path
) -> None:
    record = tmp_path / "record.py"
    record.write_text(RECORD)
    async with httpx.AsyncClient(base_url=cluster.lb.url, timeout=30) as via_lb:
        user = await signup(via_lb)
        key = (
            await via_lb.post(
                f"{API}/enrollment-keys",
                json={"name": "f", "max_uses": AGENTS, "expires_in_hours": 1},
                headers=user.headers,
            )
        ).json()["key"]
        logs = [tmp_path / f"ran-{i}.log" for i in range(AGENTS)]
        async with contextlib.AsyncExitStack() as stack:
            for i, log in enumerate(logs):
                hook = " ".join(shlex.quote(p) for p in (sys.executable, str(record), str(log)))
                options = AgentOptions(
                    server=cluster.lb.url,
                    forward_host="127.0.0.1",
                    forward_port=device_port,
                    session_file=tmp_path / f"s{i}.json",
                    pairing_token=key,
                    serial_number=f"SN-FO-{i}",
                    device_type="kl720",
                    usb_poll_interval=0.2,
                    models_dir=tmp_path / f"models-{i}",
                    deploy_hook=hook,
                )
                await stack.enter_async_context(_running(Agent(options, stable_after=0.0)))

            async def online() -> bool:
                items = (await via_lb.get(f"{API}/devices", headers=user.headers)).json()
                return bool(sum(d["remote_status"] == "online" for d in items["items"]) == AGENTS)

            await wait_for(online, limit=60)
            model = await uploaded(via_lb, user, nef(100_000, seed=5), chip="kl720")
            created = await via_lb.post(
                f"{API}/rollouts",
                json={"model_id": model["id"], "selector": "chip=kl720", "batch": 4},
                headers=user.headers,
            )
            assert created.status_code == 201, created.text
            rollout_id = created.json()["id"]

            async def mid_batch() -> bool:
                counts = await _counts(via_lb, user.headers, rollout_id)
                return bool(counts["succeeded"] >= 1 and counts["transferring"] >= 1)

            await wait_for(mid_batch, limit=60)
            leader = cluster.a if await _leader(cluster) == "node-a" else cluster.b
            survivor = cluster.b if leader is cluster.a else cluster.a
            leader.kill()

            async with httpx.AsyncClient(base_url=survivor.url, timeout=30) as direct:

                async def completed() -> bool:
                    shown = await direct.get(f"{API}/rollouts/{rollout_id}", headers=user.headers)
                    return bool(shown.json()["state"] == "completed")

                await wait_for(completed, limit=90)
                counts = await _counts(direct, user.headers, rollout_id)
        assert counts["succeeded"] == AGENTS, counts
        for log in logs:
            assert log.read_text().split() == [model["id"]], log  # exactly once, at the agent


async def _counts(http: httpx.AsyncClient, headers: dict[str, str], rollout_id: str) -> Any:
    return (await http.get(f"{API}/rollouts/{rollout_id}", headers=headers)).json()["counts"]


@contextlib.asynccontextmanager
async def _running(agent: Agent) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 30)
