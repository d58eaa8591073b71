"""``visiona serve --workers N``: N real node processes on one port, one cluster.

The workers share the public port (SO_REUSEPORT); each is a node with its own id and
internal listener, so a device whose tunnel landed on one worker answers through the
port whichever worker takes the request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import cast

import httpx
import pytest

from testkit.device_service import device_app
from testkit.live import LiveServer, serve_app
from testkit.nodes import Node, cluster_env, node_env, spawn_node, wait_node
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import signup
from tests.support.tunnel import API, connect_agent, forward_to, paired_agent_token, wait_for


@pytest.fixture(scope="module")
def workers(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[Node]:
    """``serve --workers 2`` on port 0, with no internal token set (generated per start)."""
    env = cluster_env(postgres, redis_server, node_id="box")
    del env["VISIONA_INTERNAL_TOKEN"]
    node = wait_node(spawn_node("workers", env, "--workers", "2"))
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The device's local HTTP service on a loopback port."""
    async with serve_app(device_app()) as service:
        yield service.port


def _fresh_get(url: str) -> httpx.Response:
    # One connection per request: the kernel picks a worker per connection.
    with httpx.Client(timeout=30) as client:
        return client.get(url)


def _node_ids(node: Node, attempts: int = 200) -> set[str]:
    seen: set[str] = set()
    for _ in range(attempts):
        health = _fresh_get(f"{node.url}/healthz")
        assert health.status_code == 200
        seen.add(health.json()["node"])
        if len(seen) == 2:
            break
    return seen


def test_two_workers_answer_on_one_port_with_distinct_node_ids(workers: Node) -> None:
    assert _node_ids(workers) == {"box-w0", "box-w1"}


async def test_a_device_on_either_worker_answers_through_the_shared_port(
    workers: Node, device_port: int
) -> None:
    async with httpx.AsyncClient(base_url=workers.url, timeout=30) as http:
        user = await signup(http)
        device_id, token = await paired_agent_token(http, user)
        echo = f"{workers.url}{API}/devices/{device_id}/proxy/echo/x"
        async with connect_agent(cast("LiveServer", workers), token, forward_to(device_port)):

            async def online() -> bool:
                status = await http.get(f"{API}/devices/{device_id}", headers=user.headers)
                return bool(status.json()["remote_status"] == "online")

            await wait_for(online)
            # Twenty connections: with two workers, some land on the worker without the
            # tunnel and are forwarded to the other's internal listener.
            for _ in range(20):
                async with httpx.AsyncClient(timeout=30) as fresh:
                    answer = await fresh.get(echo, headers=user.headers)
                assert answer.status_code == 200, answer.text
                assert answer.json()["path"] == "/echo/x"


def test_a_killed_worker_is_started_again_on_the_same_port(workers: Node) -> None:
    # The supervisor's children are the workers; kill one by its pid.
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(workers.proc.pid)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(children) == 2
    os.kill(int(children[0]), signal.SIGKILL)

    def both_back() -> bool:
        return _node_ids(workers, attempts=50) == {"box-w0", "box-w1"}

    deadline_checks = 0
    while not both_back():
        deadline_checks += 1
        assert deadline_checks < 60, "the killed worker did not come back"
    assert workers.proc.poll() is None


def test_more_than_one_worker_without_redis_is_a_one_line_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "visiona", "serve", "--workers", "2", "--port", "0"],
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --workers needs VISIONA_REDIS_URL (workers share sessions, rate limits "
        "and the tunnel registry in Redis)"
    ]
