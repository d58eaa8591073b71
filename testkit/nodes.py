"""Real `visiona serve` node processes on loopback (port 0) for the cluster tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis.asyncio import Redis

from testkit.nginx import NginxServer
from testkit.servers import PostgresServer, RedisServer
from visiona.cluster.registry import KEY_PREFIX
from visiona.kit import migrate

TOKEN = "cluster-test-internal-token-0123456789"  # noqa: S105 - the test cluster's fixed secret
_SERVING = re.compile(rb"visiona running on http://127\.0\.0\.1:(\d+)")


@dataclass
class Node:
    """One running node: its process and its port."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The agent tunnel endpoint of this node."""
        return f"ws://127.0.0.1:{self.port}/api/v1/agent/tunnel"

    def kill(self) -> None:
        """SIGKILL by pid (a node's death: nothing is cleaned up)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait (graceful shutdown); SIGKILL if it hangs."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


class Balanced:
    """Nodes A and B, nginx in front of them, and the cluster's environment."""

    def __init__(self, a: Node, b: Node, lb: NginxServer, env: dict[str, str]) -> None:
        """Hold what the module's fixture started."""
        self.a, self.b, self.lb, self.env = a, b, lb, env

    async def owner(self, device_id: str) -> str | None:
        """The node id the registry names for the device (read from Redis directly)."""
        redis = Redis.from_url(self.env["VISIONA_REDIS_URL"])
        try:
            raw = await redis.get(f"{KEY_PREFIX}{device_id}")
        finally:
            await redis.aclose()
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        match = re.search(r'"node": "([^"]+)"', text)
        return match.group(1) if match else None


def node_env(**settings: str) -> dict[str, str]:
    """The environment of a node: the caller's without any VISIONA_ variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONA_")}
    env.update({f"VISIONA_{k.upper()}": v for k, v in settings.items()})
    return env


def cluster_env(
    postgres: PostgresServer, redis_server: RedisServer, **settings: str
) -> dict[str, str]:
    """The environment of a fresh cluster: its own migrated database, a Redis database,
    a shared model store, the internal token, short keepalives (``settings`` override)."""
    url = postgres.create_database(f"cluster_{uuid.uuid4().hex[:10]}")
    migrate.upgrade(url)
    redis_db = int(uuid.uuid4().int % 15) + 1
    store = Path(tempfile.mkdtemp(prefix="visiona-cluster-objects-"))
    base = {
        "database_url": url.replace("+asyncpg", ""),
        "redis_url": redis_server.url.rsplit("/", 1)[0] + f"/{redis_db}",
        "storage_url": store.as_uri(),
        "internal_token": TOKEN,
        "tunnel_ping_interval": "0.3",
        "tunnel_ping_timeout": "0.5",
        "tunnel_status_interval": "0.3",
        "cluster_connect_timeout": "1.0",
        "log_level": "INFO",
        "pair_rate_limit": "100000",
    }
    return node_env(**{**base, **settings})


def spawn_node(
    name: str, env: dict[str, str], *args: str, port: int = 0
) -> tuple[str, subprocess.Popen[bytes], Path]:
    """Start `visiona serve [args]` on ``port`` (0: the kernel's choice; see :func:`wait_node`)."""
    log = Path(tempfile.mkstemp(prefix=f"visiona-{name}-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "visiona", "serve", *args],
            env={**env, "VISIONA_HOST": "127.0.0.1", "VISIONA_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
        )
    return name, proc, log


def wait_node(spawned: tuple[str, subprocess.Popen[bytes], Path], timeout: float = 120) -> Node:
    """Wait until the spawned node answers ``/healthz`` (bounded; the machine may be busy)."""
    name, proc, log = spawned
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node {name} exited:\n{log.read_text(errors='replace')[-3000:]}")
        found = _SERVING.search(log.read_bytes())
        if found:
            port = int(found.group(1))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    return Node(name, proc, port, log)
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"node {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")


def start_node(name: str, env: dict[str, str]) -> Node:
    """Start one node and wait until it serves."""
    return wait_node(spawn_node(name, env))


@contextlib.contextmanager
def running_nodes(env: dict[str, str], *names: str) -> Iterator[list[Node]]:
    """Nodes ``node-<name>`` started together; stopped (SIGTERM) on exit, killed if stuck."""
    spawned = [spawn_node(name, {**env, "VISIONA_NODE_ID": f"node-{name}"}) for name in names]
    started: list[Node] = []
    try:
        started.extend(wait_node(s) for s in spawned)
        yield started
    finally:
        for node in started:
            node.stop()
        for _, proc, _ in spawned:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def balanced_nodes(
    postgres: PostgresServer, redis_server: RedisServer, **settings: str
) -> Iterator[Balanced]:
    """Nodes A and B (``node-a``, ``node-b``) of a fresh cluster and nginx in front of
    them, for one test (the ones that kill a node): nginx's address is trusted for
    ``X-Forwarded-For``, tunnel keepalives of 1 s (a lease TTL of 4 s: long enough to
    tell a refused connection from an expired lease without timing anything);
    ``settings`` on top."""
    defaults = {
        "forwarded_allow_ips": "127.0.0.1",
        "tunnel_ping_interval": "1.0",
        "tunnel_ping_timeout": "1.0",
    }
    env = cluster_env(postgres, redis_server, **{**defaults, **settings})
    with running_nodes(env, "a", "b") as (a, b):
        lb = NginxServer([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        try:
            lb.start()
            yield Balanced(a, b, lb, env)
        finally:
            lb.cleanup()
