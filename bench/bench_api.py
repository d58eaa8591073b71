"""API benchmark: `GET /auth/me`, `GET /devices/{id}` and two writes, 1 and 16 clients.

Reads are driven by wrk when it is installed (`make bench` installs it), writes by an
httpx client. Each backend's figures are printed next to a floor measured on the same servers in
the same run: `pgbench -S` and `redis-benchmark` for PostgreSQL + Redis, direct
sqlite3 primary-key reads for SQLite. On PostgreSQL + Redis the reads are also measured
against the API floor (bench/api_floor.py: raw Starlette on the same uvicorn doing the
same EVALSHA + one asyncpg fetchrow + JSON), interleaved (ours, floor, ours, ...), median
and range of ROUNDS runs each. wrk's Non-2xx or socket errors fail the bench, and a
floor that cannot be measured is an error, never 0. Reproduce: `.venv/bin/python -m bench api`.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.support import LoadResult, WrkResult, drive, median, visiona_server
from testkit.servers import PostgresServer, RedisServer, free_port, postgres_bindir

ME_REQUESTS = 2000
REGISTER_REQUESTS = 100
DEVICE_REQUESTS = 1000
PASSWORD = "benchmark password"
ROUNDS = 3


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
    if "Non-2xx" in out or "Socket errors" in out:
        # A benchmark of error answers measures nothing: fail instead of printing it.
        raise BenchError(f"wrk saw failures on {url}:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise BenchError(f"wrk printed no rate for {url}:\n{out}")
    rps = float(found.group(1))

    def pct(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
        if not match:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    return WrkResult(rps=rps, p50=pct("50"), p99=pct("99"))


class BenchError(RuntimeError):
    """A figure could not be measured (never printed as 0)."""


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
    if match is None:
        raise BenchError(f"pgbench printed no tps:\n{out}")
    return float(match.group(1))


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
    if match is None:
        raise BenchError(f"redis-benchmark printed no rate:\n{out}")
    return float(match.group(1))


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


def _floor_server(url: str, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.api_floor", str(port), dsn, redis_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


def _wait_up(base: str, path: str, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + path, headers=headers, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise BenchError(f"the API floor at {base} never answered 200: it cannot be measured")


def _device_for_bench(base: str) -> tuple[dict[str, str], str]:
    with httpx.Client(base_url=base, timeout=30) as client:
        email = f"floor-{uuid.uuid4().hex}@example.com"
        client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "f"}
        )
        login = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        created = client.post(
            "/api/v1/devices",
            json={"name": "floor", "device_type": "kl520", "serial_number": uuid.uuid4().hex},
            headers=headers,
        )
        created.raise_for_status()
    return headers, str(created.json()["id"])


def _against_floor(base: str, url: str, redis_url: str) -> None:
    """Interleave wrk runs on our routes and on the floor app; print medians, ranges, ratios."""
    headers, device_id = _device_for_bench(base)
    device_path = f"/api/v1/devices/{device_id}"
    floor_proc, floor_base = _floor_server(url, redis_url)
    try:
        _wait_up(floor_base, device_path, headers)
        for connections in (1, 16):
            runs: dict[str, list[WrkResult]] = {"devices": [], "me": [], "floor": []}
            for _ in range(ROUNDS):  # interleaved: ours, floor, ours, floor, ...
                runs["devices"].append(_wrk(base + device_path, headers, connections))
                runs["floor"].append(_wrk(floor_base + device_path, headers, connections))
                runs["me"].append(_wrk(f"{base}/api/v1/auth/me", headers, connections))
            floor = median([r.rps for r in runs["floor"]])
            for name, label in (
                ("floor", "floor: Starlette+EVALSHA+asyncpg GET device"),
                ("devices", "GET /devices/{id}"),
                ("me", "GET /auth/me"),
            ):
                rates = [r.rps for r in runs[name]]
                p50 = median([r.p50 for r in runs[name]])
                print(
                    f"{f'{label}, {connections} conn':<52} median {median(rates):7.0f} req/s "
                    f"(range {min(rates):.0f}-{max(rates):.0f}, n={len(rates)})  p50 {p50:5.2f} ms"
                    + ("" if name == "floor" else f"  ratio to floor {median(rates) / floor:.2f}")
                )
    finally:
        floor_proc.terminate()
        floor_proc.wait(timeout=30)


def _print(results: list[tuple[str, LoadResult | WrkResult]]) -> None:
    for label, result in results:
        print(result.line(label))


def main() -> None:
    """Run the API benchmark on SQLite and on PostgreSQL + Redis."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        print("-- SQLite, web sessions in the same file (embedded defaults)")
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
            if shutil.which("wrk"):
                _against_floor(base, url, redis.url)
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
        " register is bound by argon2id (64 MiB, t=3) by design. The machine may be loaded by"
        " other work: read the ratios (measured interleaved, same run), not the absolute rates."
    )
