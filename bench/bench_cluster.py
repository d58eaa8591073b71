"""Two nodes: the forwarding hop's cost, and what a second node adds behind nginx.

Set-up: a throwaway PostgreSQL and Redis, nodes A and B (`visiona serve`, clustered),
the real `visiona agent` connected to B, the device's local service the Go origin
(``tunnelpeer -mode origin``), requests driven by the Go load client.

* **forwarding**: the same proxied request through B (the owner: client → B →
  tunnel) and through A (client → A → B's internal route → tunnel), interleaved in
  each round: a tiny request (``TINY`` sequential on one connection, p50/p99) and a
  ``CLUSTER_BENCH_MIB`` MiB download (MB/s). A's ratio to B is the hop's price (A
  reaches B over its node link: docs/operations.md, "The node link").
* **workers**: proxied traffic through ``visiona serve --workers 2`` (its own agent)
  vs one ``serve`` process (B), a new connection per request (the kernel spreads
  them: with two workers about half cross the node link): tiny p50/p99, tiny req/s 8
  at a time, 4 downloads of a quarter of ``CLUSTER_BENCH_MIB`` (``CLUSTER_BENCH_WORKERS=0``
  skips it).
* **API reads across 1 vs 2 nodes**: ``GET /api/v1/auth/me`` (session in Redis, user
  row in PostgreSQL) through nginx configured with docs/nginx.conf, its upstream
  A alone or A and B, wrk at 16 connections for ``CLUSTER_BENCH_SECONDS`` (0 skips
  it), the two set-ups interleaved in each round.

Every figure is the median of ``CLUSTER_BENCH_ROUNDS`` rounds with its range. The
machine has 2 cores shared by the nodes, nginx, PostgreSQL, Redis and the load
generator (and other work when it is busy): only same-run ratios mean much.

Reproduce: ``.venv/bin/python -m bench cluster`` (env ``CLUSTER_BENCH_MIB``,
``CLUSTER_BENCH_ROUNDS``, ``CLUSTER_BENCH_TINY``, ``CLUSTER_BENCH_SECONDS``,
``CLUSTER_BENCH_WORKERS``). A smoke run: ``CLUSTER_BENCH_MIB=16 CLUSTER_BENCH_ROUNDS=1
CLUSTER_BENCH_TINY=200 CLUSTER_BENCH_SECONDS=0 .venv/bin/python -m bench cluster``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.bench_tunnel import Proc, _load, _pairing_token, _user
from testkit.gopeer import build_tunnel_peer
from testkit.nginx import NginxServer
from testkit.servers import PostgresServer, RedisServer, free_port
from visiona.kit import migrate

MIB = 1024 * 1024
BIG = int(float(os.environ.get("CLUSTER_BENCH_MIB", "256")) * MIB)
ROUNDS = int(os.environ.get("CLUSTER_BENCH_ROUNDS", "3"))
TINY = int(os.environ.get("CLUSTER_BENCH_TINY", "1000"))
SECONDS = int(os.environ.get("CLUSTER_BENCH_SECONDS", "5"))
WORKERS = os.environ.get("CLUSTER_BENCH_WORKERS", "1") != "0"
CLIENTS = 16
API = "/api/v1"
TOKEN = "bench-cluster-internal-token-0123456789"


@contextlib.contextmanager
def _node(name: str, env: dict[str, str], *args: str) -> Iterator[str]:
    """`visiona serve [args]` as node ``name`` on a free port; its base URL."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "visiona", "serve", "--port", str(port), *args],
            env={**env, "VISIONA_NODE_ID": name},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"node {name} did not become healthy:\n{tail}")
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _env(pg: PostgresServer, redis: RedisServer, store: Path) -> dict[str, str]:
    url = pg.create_database("bench_cluster")
    migrate.upgrade(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONA_")}
    env.update(
        {
            "VISIONA_DATABASE_URL": url.replace("+asyncpg", ""),
            "VISIONA_REDIS_URL": redis.url,
            "VISIONA_INTERNAL_TOKEN": TOKEN,
            "VISIONA_STORAGE_URL": store.as_uri(),
            "VISIONA_FORWARDED_ALLOW_IPS": "127.0.0.1",
            "VISIONA_LOG_LEVEL": "WARNING",
            "VISIONA_PAIR_RATE_LIMIT": "1000000",
            "VISIONA_LOGIN_RATE_LIMIT_PER_ADDRESS": "1000000",
        }
    )
    return env


def _owner_of(base: str, user_token: str) -> str:
    headers = {"Authorization": f"Bearer {user_token}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        items = httpx.get(f"{base}{API}/devices", headers=headers).json()["items"]
        if items and items[0]["remote_status"] == "online":
            return str(items[0]["id"])
        time.sleep(0.2)
    raise RuntimeError("the agent did not come online")


def _device_of(base: str, user_token: str, serial: str) -> str:
    """The id of the user's device ``serial`` once it is online."""
    headers = {"Authorization": f"Bearer {user_token}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for item in httpx.get(f"{base}{API}/devices", headers=headers).json()["items"]:
            if item["serial_number"] == serial and item["remote_status"] == "online":
                return str(item["id"])
        time.sleep(0.2)
    raise RuntimeError(f"the agent {serial} did not come online")


def _wrk_rps(url: str, auth: str) -> float:
    args = ["wrk", "-t1", f"-c{CLIENTS}", f"-d{SECONDS}s", "-H", f"Authorization: {auth}", url]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures on {url}:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no rate for {url}:\n{out}")
    return float(found.group(1))


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):9.2f} [{min(values):.2f}-{max(values):.2f}]"


def _forwarding(binary: Path, owner: str, forwarder: str, device_id: str, auth: str) -> None:
    paths = {
        "owner (B)": f"{owner}{API}/devices/{device_id}/proxy",
        "forwarded (A→B)": f"{forwarder}{API}/devices/{device_id}/proxy",
    }
    for url in paths.values():  # warm up both paths
        _load(binary, f"{url}/bytes/{16 * MIB}", n=2, auth=auth)
        _load(binary, f"{url}/tiny", n=50, auth=auth)
    mbps: dict[str, list[float]] = {name: [] for name in paths}
    p50: dict[str, list[float]] = {name: [] for name in paths}
    p99: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, url in paths.items():
            mbps[name].append(_load(binary, f"{url}/bytes/{BIG}", n=1, auth=auth)["mbps"])
        for name, url in paths.items():
            tiny = _load(binary, f"{url}/tiny", n=TINY, auth=auth)
            p50[name].append(tiny["p50_ms"])
            p99[name].append(tiny["p99_ms"])
    owner_name, fwd_name = list(paths)
    print(f"forwarding: medians of {ROUNDS} interleaved rounds [range]", flush=True)
    for name in paths:
        print(
            f"  {name:<16} {BIG / MIB:g} MiB download MB/s {_fmt(mbps[name])}  |  "
            f"{TINY} tiny p50 ms {_fmt(p50[name])}  p99 ms {_fmt(p99[name])}",
            flush=True,
        )
    mb_ratio = statistics.median(mbps[fwd_name]) / statistics.median(mbps[owner_name])
    p50_ratio = statistics.median(p50[fwd_name]) / statistics.median(p50[owner_name])
    print(
        f"  forwarded / owner: download MB/s x{mb_ratio:.2f}, tiny p50 x{p50_ratio:.2f} "
        "(MB/s: < 1 is the hop's cost; p50: > 1 is the hop's cost)",
        flush=True,
    )


def _workers(binary: Path, paths: dict[str, str], auth: str) -> None:
    """Proxied traffic on one machine: `serve` (one process) vs `serve --workers 2`.

    A new connection per request, so the kernel spreads them over the workers: with
    two, about half land on the worker without the device's tunnel and cross the link.
    """
    for url in paths.values():  # warm up (and open the workers' links)
        _load(binary, f"{url}/tiny", n=50, new_conn=True, auth=auth)
    p50: dict[str, list[float]] = {name: [] for name in paths}
    p99: dict[str, list[float]] = {name: [] for name in paths}
    rps: dict[str, list[float]] = {name: [] for name in paths}
    mbps: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, url in paths.items():
            tiny = _load(binary, f"{url}/tiny", n=TINY, new_conn=True, auth=auth)
            p50[name].append(tiny["p50_ms"])
            p99[name].append(tiny["p99_ms"])
        for name, url in paths.items():
            many = _load(binary, f"{url}/tiny", n=TINY, c=8, new_conn=True, auth=auth)
            rps[name].append(many["requests"] / many["seconds"])
        for name, url in paths.items():
            big = _load(binary, f"{url}/bytes/{BIG // 4}", n=4, new_conn=True, auth=auth)
            mbps[name].append(big["mbps"])
    print(
        f"proxied traffic, serve --workers 2 vs 1 (a new connection per request), "
        f"medians of {ROUNDS} interleaved rounds [range]",
        flush=True,
    )
    for name in paths:
        print(
            f"  {name:<16} {TINY} tiny p50 ms {_fmt(p50[name])}  p99 ms {_fmt(p99[name])}  |  "
            f"8 at a time req/s {_fmt(rps[name])}  |  4 x {BIG / 4 / MIB:g} MiB MB/s "
            f"{_fmt(mbps[name])}",
            flush=True,
        )
    one, two = list(paths)

    def ratio(values: dict[str, list[float]]) -> float:
        return statistics.median(values[two]) / statistics.median(values[one])

    print(
        f"  2 workers / 1: tiny p50 x{ratio(p50):.2f}, req/s x{ratio(rps):.2f}, "
        f"MB/s x{ratio(mbps):.2f}",
        flush=True,
    )


def _agent(
    server: str, token: str, origin_at: str, session: Path, serial: str
) -> subprocess.Popen[bytes]:
    """`visiona agent` paired with ``token`` to ``server``, forwarding to the origin."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "visiona", "agent", "--server", server,
            "--token", token, "--forward", origin_at,
            "--session-file", str(session), "--serial", serial,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _reads(one: NginxServer, two: NginxServer, auth: str) -> None:
    setups = {"1 node (A)": one, "2 nodes (A+B)": two}
    for lb in setups.values():  # warm up
        _wrk_rps(f"{lb.url}{API}/auth/me", auth)
    rps: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(ROUNDS):
        for name, lb in setups.items():
            rps[name].append(_wrk_rps(f"{lb.url}{API}/auth/me", auth))
    print(
        f"API reads GET /auth/me through nginx, wrk {CLIENTS} connections {SECONDS}s, "
        f"medians of {ROUNDS} interleaved rounds [range]",
        flush=True,
    )
    for name, values in rps.items():
        print(f"  {name:<16} req/s {_fmt(values)}", flush=True)
    ratio = statistics.median(rps["2 nodes (A+B)"]) / statistics.median(rps["1 node (A)"])
    print(f"  2 nodes / 1 node: x{ratio:.2f}", flush=True)


def main() -> None:
    """Run both scenarios and print their figures and ratios."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run `make bench` (scripts/system-deps.sh)")
    binary = build_tunnel_peer()
    pg, redis = PostgresServer(), RedisServer()
    pg.start()
    redis.start()
    procs: list[Proc] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp_name:
            tmp = Path(tmp_name)
            (tmp / "objects").mkdir()
            env = _env(pg, redis, tmp / "objects")
            origin = Proc(str(binary), "-mode", "origin")
            procs.append(origin)
            origin_at = f"127.0.0.1:{origin.event('listening')['port']}"
            with _node("node-a", env) as a, _node("node-b", env) as b:
                user_token = _user(a)
                agent = _agent(
                    b, _pairing_token(a, user_token), origin_at, tmp / "agent-b.json", "BENCH"
                )
                one = NginxServer([a.removeprefix("http://")])
                two = NginxServer([a.removeprefix("http://"), b.removeprefix("http://")])
                try:
                    device_id = _owner_of(b, user_token)
                    auth = f"Bearer {user_token}"
                    _forwarding(binary, b, a, device_id, auth)
                    if WORKERS:
                        with _node("node-w", env, "--workers", "2") as w:
                            second = _agent(
                                w,
                                _pairing_token(a, user_token),
                                origin_at,
                                tmp / "agent-w.json",
                                "BENCH-W",
                            )
                            try:
                                on_w = _device_of(a, user_token, "BENCH-W")
                                _workers(
                                    binary,
                                    {
                                        "1 worker (B)": f"{b}{API}/devices/{device_id}/proxy",
                                        "2 workers (W)": f"{w}{API}/devices/{on_w}/proxy",
                                    },
                                    auth,
                                )
                            finally:
                                second.terminate()
                                second.wait(timeout=30)
                    if SECONDS:
                        one.start()
                        two.start()
                        _reads(one, two, auth)
                finally:
                    one.cleanup()
                    two.cleanup()
                    agent.terminate()
                    agent.wait(timeout=30)
    finally:
        for proc in procs:
            proc.stop()
        redis.cleanup()
        pg.cleanup()
