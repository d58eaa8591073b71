"""A fleet of Go agents (``tunnelpeer -mode fleet``) behind nginx over two nodes: one node
is killed (SIGKILL by pid) and every tunnel it held comes back on the survivor.

The small-N form of ``bench scale2`` (issue 27: two nodes hold 20,000 tunnels and a
killed node's 10,000 are online on the survivor within 30 s): 2 x 50 real agents
(WebSocket + hashicorp/yamux, reconnecting as ``visiona agent`` does) through the
nginx of docs/nginx.conf; the registry, the API and a proxied request are checked
after the kill. No speed is asserted (the limits only guard against a hang).
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from redis.asyncio import Redis

from testkit.gopeer import build_tunnel_peer, run_fleet
from testkit.nodes import Balanced, balanced_nodes
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import User, signup
from tests.support.devices import pairing_token
from tests.support.tunnel import API, wait_for
from visiona.cluster.registry import KEY_PREFIX

PER_NODE = 50
TOTAL = 2 * PER_NODE


@pytest.fixture
def cluster(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[Balanced]:
    """Nodes A and B and nginx in front, for one test (it kills a node)."""
    with balanced_nodes(postgres, redis_server) as balanced:
        yield balanced


async def _pair(http: httpx.AsyncClient, user: User, n: int) -> list[tuple[str, str]]:
    """``n`` paired devices: (device id, session token)."""
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[str, str]:
        async with gate:
            token = (await pairing_token(http, user))["token"]
            paired = await http.post(
                f"{API}/agent/pair",
                json={
                    "pairing_token": token,
                    "serial_number": f"FLEET-{i}",
                    "device_type": "kl520",
                    "name": f"fleet {i}",
                },
            )
            assert paired.status_code == 201, paired.text
            return str(paired.json()["device_id"]), str(paired.json()["session_token"])

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _holders(redis: Redis, device_ids: list[str]) -> dict[str, str]:
    """The node the registry names for each device (``-``: none)."""
    holders = {}
    for device, raw in zip(
        device_ids, await redis.mget([f"{KEY_PREFIX}{d}" for d in device_ids]), strict=True
    ):
        text = raw.decode() if isinstance(raw, bytes) else raw
        found = re.search(r'"node": "([^"]+)"', text) if text else None
        holders[device] = found.group(1) if found else "-"
    return holders


async def _owners(redis: Redis, device_ids: list[str]) -> collections.Counter[str]:
    """How many of the devices each node holds in the registry (``-``: none)."""
    return collections.Counter((await _holders(redis, device_ids)).values())


async def test_a_killed_nodes_tunnels_come_back_on_the_survivor_through_nginx(
    cluster: Balanced,
) -> None:
    binary = build_tunnel_peer()
    redis = Redis.from_url(cluster.env["VISIONA_REDIS_URL"])
    try:
        async with httpx.AsyncClient(base_url=cluster.lb.url, timeout=30) as http:
            user = await signup(http)
            devices = await _pair(http, user, TOTAL)
            ids = [device for device, _ in devices]
            async with run_fleet(binary, cluster.lb.url, [t for _, t in devices]) as fleet:
                await fleet.until(lambda p: p["up"] == TOTAL, limit=60)

                async def all_leased() -> bool:
                    return (await _owners(redis, ids))["-"] == 0

                await wait_for(all_leased, limit=30)
                split = await _owners(redis, ids)
                victim, survivor = (
                    (cluster.a, cluster.b)
                    if split["node-a"] >= split["node-b"]
                    else (cluster.b, cluster.a)
                )
                moved = split[f"node-{victim.name}"]
                holders = await _holders(redis, ids)
                one_moved = next(d for d in ids if holders[d] == f"node-{victim.name}")
                assert moved > 0  # nginx spread the tunnels over both nodes
                connects = fleet.progress["connects"]
                killed_at = datetime.now(UTC)

                victim.kill()

                await fleet.until(
                    lambda p: p["up"] == TOTAL and p["connects"] - connects >= moved, limit=60
                )

                async def all_on_the_survivor() -> bool:
                    return (await _owners(redis, ids))[f"node-{survivor.name}"] == TOTAL

                await wait_for(all_on_the_survivor, limit=30)

                async def all_online_again() -> bool:
                    listed = await http.get(
                        f"{API}/devices",
                        params={"limit": 200, "remote_status": "online"},
                        headers=user.headers,
                    )
                    items = listed.json()["items"]
                    fresh = [
                        d
                        for d in items
                        if d["last_connected_at"]
                        and datetime.fromisoformat(d["last_connected_at"]) > killed_at
                    ]
                    return len(items) == TOTAL and len(fresh) >= moved

                await wait_for(all_online_again, limit=30)

                # a device that moved answers a proxied request (the fleet's tiny answer)
                answered = await http.get(
                    f"{API}/devices/{one_moved}/proxy/ping", headers=user.headers
                )
                assert answered.status_code == 200
                assert answered.text == "ok"
                assert fleet.progress["denied"] == 0
    finally:
        await redis.aclose()
