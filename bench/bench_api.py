"""API benchmark: `GET /auth/me` and two writes (register, device create), 1 and 16 clients.

Reads are driven by wrk when it is installed (`make bench` installs it), writes by an
httpx client. Each backend's figures are printed next to a floor measured on the same servers in
the same run: `pgbench -S` and `redis-benchmark` for PostgreSQL + Redis, direct
sqlite3 primary-key reads for SQLite. Reproduce: `.venv/bin/python -m bench api`.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.support import LoadResult, WrkResult, drive, visiona_server
from testkit.servers import PostgresServer, RedisServer, postgres_bindir

ME_REQUESTS = 2000
REGISTER_REQUESTS = 100
DEVICE_REQUESTS = 1000
PASSWORD = "benchmark password"


async def _scenarios(base: str) -> list[tuple[str, LoadResult | WrkResult]]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        email = f"bench-{uuid.uuid4().hex}@example.com"
        await client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "b"}
        )
        login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['token']}"}

    async def me(c: httpx.AsyncClient, _i: int) -> httpx.Response:
        return await c.get("/api/v1/auth/me", headers=headers)

    run_id = uuid.uuid4().hex[:8]

    async def register(c: httpx.AsyncClient, i: int) -> httpx.Response:
        return await c.post(
            "/api/v1/auth/register",
            json={"email": f"r{run_id}-{i}@example.com", "password": PASSWORD, "name": "r"},
        )

    results: list[tuple[str, LoadResult | WrkResult]] = []
    for concurrency in (1, 16):
        await drive(concurrency, 200, me, base)  # warm-up
        label = f"GET /auth/me, {concurrency} client(s)"
        if shutil.which("wrk"):
            results.append((label, _wrk(f"{base}/api/v1/auth/me", headers, concurrency)))
        else:
            results.append((label, await drive(concurrency, ME_REQUESTS, me, base)))
    for concurrency in (1, 16):
        run_id = uuid.uuid4().hex[:8]
        results.append(
            (
                f"POST /auth/register, {concurrency} client(s)",
                await drive(concurrency, REGISTER_REQUESTS, register, base),
            )
        )

    async def create_device(c: httpx.AsyncClient, i: int) -> httpx.Response:
        return await c.post(
            "/api/v1/devices",
            json={"name": "bench", "device_type": "kl520", "serial_number": f"{run_id}-{i}"},
            headers=headers,
        )

    for concurrency in (1, 16):
        run_id = uuid.uuid4().hex[:8]
        results.append(
            (
                f"POST /devices, {concurrency} client(s)",
                await drive(concurrency, DEVICE_REQUESTS, create_device, base),
            )
        )
    return results


def _wrk(url: str, headers: dict[str, str], connections: int) -> WrkResult:
    """Drive ``url`` with wrk (C, one thread) so the load generator costs little CPU."""
    args = ["wrk", "-t1", f"-c{connections}", "-d5s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
        if not match:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    return WrkResult(rps=rps, p50=pct("50"), p99=pct("99"))


def _pgbench(pg: PostgresServer, clients: int) -> float:
    bindir = postgres_bindir()
    args = ["-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres"]
    out = subprocess.run(
        [
            str(bindir / "pgbench"),
            *args,
            "-S",
            "-n",
            "-c",
            str(clients),
            "-j",
            "1",
            "-T",
            "5",
            "bench",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"tps = ([\d.]+)", out)
    return float(match.group(1)) if match else 0.0


def _redis_benchmark(redis: RedisServer, clients: int) -> float:
    out = subprocess.run(
        [
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(redis.port),
            "-c",
            str(clients),
            "-n",
            "50000",
            "-t",
            "get",
            "-q",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"([\d.]+) requests per second", out)
    return float(match.group(1)) if match else 0.0


def _sqlite_floor(path: Path) -> float:
    conn = sqlite3.connect(path)
    row = conn.execute("SELECT id FROM users LIMIT 1").fetchone()
    n = 20000
    started = time.perf_counter()
    for _ in range(n):
        conn.execute(
            "SELECT id, email, name, created_at, updated_at FROM users WHERE id = ?", row
        ).fetchone()
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def _print(results: list[tuple[str, LoadResult | WrkResult]]) -> None:
    for label, result in results:
        print(result.line(label))


def main() -> None:
    """Run the API benchmark on SQLite and on PostgreSQL + Redis."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        print("-- SQLite + in-process sessions (embedded defaults)")
        with visiona_server({"VISIONA_DATA_DIR": str(data)}) as base:
            results = asyncio.run(_scenarios(base))
        _print(results)
        floor = _sqlite_floor(data / "visiona.db")
        print(f"{'floor: sqlite3 PK read, same file, 1 thread':<44} {floor:>9.0f} q/s")
        me1 = results[0][1].rps
        print(f"ratio GET /auth/me (1 client) / sqlite floor: {me1 / floor:.3f}")

    pg = PostgresServer()
    redis = RedisServer()
    pg.start()
    redis.start()
    try:
        url = pg.create_database("bench")
        subprocess.run(
            [
                str(postgres_bindir() / "pgbench"),
                "-h",
                "127.0.0.1",
                "-p",
                str(pg.port),
                "-U",
                "postgres",
                "-i",
                "-q",
                "-s",
                "1",
                "bench",
            ],
            capture_output=True,
            check=True,
        )
        print("\n-- PostgreSQL + Redis")
        with visiona_server({"VISIONA_DATABASE_URL": url, "VISIONA_REDIS_URL": redis.url}) as base:
            results = asyncio.run(_scenarios(base))
        _print(results)
        for clients in (1, 16):
            pg_tps = _pgbench(pg, clients)
            redis_rps = _redis_benchmark(redis, clients)
            print(f"{f'floor: pgbench -S, {clients} client(s)':<44} {pg_tps:>9.0f} tps")
            print(
                f"{f'floor: redis-benchmark GET, {clients} client(s)':<44} {redis_rps:>9.0f} req/s"
            )
            me = next(r for label, r in results if label == f"GET /auth/me, {clients} client(s)")
            print(
                f"ratio GET /auth/me ({clients}) / pgbench -S ({clients}): {me.rps / pg_tps:.3f}; "
                f"/ redis GET: {me.rps / redis_rps:.3f}"
            )
    finally:
        redis.cleanup()
        pg.cleanup()
    print(
        "note: the load generators (wrk for reads, httpx for writes) share the server's 2 cores;"
        " register is bound by argon2id (64 MiB, t=3) by design."
    )
