"""Many tunnels on one node: pairing, a connect storm, idle cost, a restart (issue 27).

N lightweight agents in this process speak the real protocol (the agent's own picows
WebSocket and yamux session, answering pings and proxied requests; they honour
``Retry-After`` and the 1001 reconnect hint as ``visiona agent`` does) against a real
``visiona serve`` on PostgreSQL + Redis, then against a minimal Go tunnel server
(``testkit/go/src/tunnelpeer -mode hub``: gorilla/websocket + hashicorp/yamux) as the
reference, in the same run. Printed: time to pair N; connect storm to all online (as
the agents see it, and as the API reports it); the upgrade answers by status; idle CPU
and RSS per tunnel; a tiny proxied request's p50 with N tunnels up against with one;
SIGTERM → restart → all online again; what the audit trail recorded of it (every
tunnel up and every drained one, nothing left over).

``BENCH_SCALE_N`` sets N (default 200, CI-friendly; the issue's figure is 10,000 —
raise the fd limit first, ``ulimit -n``); ``BENCH_SCALE_IDLE`` the idle window in
seconds (default 30); ``BENCH_SCALE_LOG`` a file that keeps the servers' log (else it
is summarised — warnings, errors, tracebacks — and removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.bench_tunnel import Proc
from testkit.gopeer import build_tunnel_peer
from testkit.servers import PostgresServer, RedisServer, free_port
from visiona.agent.runner import Backoff, retry_after_delay
from visiona.agent.websocket import UpgradeRefusedError, open_tunnel_socket
from visiona.kit import migrate
from visiona.kit.settings import Settings
from visiona.tunnel.hub import RESTART_REASON
from visiona.wire import API_PREFIX, TUNNEL_PATH, reconnect_hint
from visiona.yamux import Config, Session, Stream, YamuxError

API = API_PREFIX
N = int(os.environ.get("BENCH_SCALE_N", "200"))
#: the idle window: two of the server's 15 s keepalive periods (a shorter one sees a part of
#: a period, and /proc's 10 ms CPU ticks make 5 s read 0.2 % steps)
IDLE_SECONDS = float(os.environ.get("BENCH_SCALE_IDLE", "30"))
PROXIED = 200
#: visiona serve's keepalive interval (its default), which the Go reference uses too
PING_INTERVAL = float(Settings.model_fields["tunnel_ping_interval"].default)
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
#: answers one stream an agent accepted; the second argument is the agent's session token
StreamHandler = Callable[[Stream, str], Coroutine[Any, Any, None]]


@dataclass
class Fleet:
    """The in-process agents: their loops, how many are up, what the upgrades answered.

    ``handler`` answers each stream an agent accepts (given the agent's session token;
    by default a tiny HTTP answer), ``on_up`` hears of each tunnel up (with the token),
    ``config`` is the agents' yamux configuration.
    """

    ws_url: str
    handler: StreamHandler = field(default=lambda stream, _token: _answer(stream))
    on_up: Callable[[str], None] | None = None
    config: Config = field(default_factory=lambda: Config(enable_keepalive=False))
    up: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, answer: str) -> None:
        self.answers[answer] = self.answers.get(answer, 0) + 1

    async def agent(self, token: str) -> None:
        """One agent: connect, answer streams, come back when told (or with backoff)."""
        backoff = Backoff()
        while not self.stop.is_set():
            delay: float | None = None  # None: the backoff's next step
            try:
                socket = await open_tunnel_socket(self.ws_url, token, handshake_timeout=30)
            except UpgradeRefusedError as err:
                self.count(str(err.status))
                if err.retry_after is not None:
                    delay = retry_after_delay(err.retry_after)
            except (OSError, TimeoutError) as err:
                self.count(type(err).__name__)
            except Exception as err:  # noqa: BLE001 - picows' own handshake errors
                self.count(type(err).__name__)
            else:
                self.count("101")
                backoff.reset()
                session = Session(socket.feed, client=False, config=self.config)
                accepting = asyncio.create_task(_answer_streams(session, self.handler, token))
                self.up += 1
                if self.on_up is not None:
                    self.on_up(token)
                stopping = asyncio.create_task(self.stop.wait())
                closed = asyncio.create_task(session.closed.wait())
                await asyncio.wait({stopping, closed}, return_when=asyncio.FIRST_COMPLETED)
                self.up -= 1
                for task in (stopping, closed, accepting):
                    task.cancel()
                await session.close()
                hint = reconnect_hint(socket.close_code, socket.close_reason)
                if hint is not None:  # the node restarts: as `visiona agent` does
                    backoff.expect_restart()
                delay = hint if hint is not None else 0.5 * random.random()
            if delay is None:
                delay = backoff.next_delay()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)

    def start(self, tokens: list[str]) -> None:
        self.tasks.extend(asyncio.create_task(self.agent(t)) for t in tokens)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _answer_streams(session: Session, handler: StreamHandler, token: str) -> None:
    tasks: set[asyncio.Task[None]] = set()  # referenced until done
    try:
        with contextlib.suppress(YamuxError):
            while True:
                stream = await session.accept_stream()
                task = asyncio.get_running_loop().create_task(handler(stream, token))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()


async def _answer(stream: Stream) -> None:
    try:
        await stream.readuntil(b"\r\n\r\n")
        stream.write(ANSWER)
        stream.write_eof()
        await stream.drain()
    except (YamuxError, asyncio.IncompleteReadError):
        stream.reset()


async def pair_devices(
    clients: list[httpx.AsyncClient], headers: dict[str, str], n: int, *, concurrency: int = 16
) -> list[tuple[str, str]]:
    """Pair ``n`` devices (a pairing token each, then the agent's pair call), ``concurrency``
    at a time spread over ``clients`` (one per node: each node hashes its share), a pair
    tried again (three times in all) when its connection failed; their (device id,
    session token) in order."""
    gate = asyncio.Semaphore(concurrency)

    async def pair(i: int) -> tuple[str, str]:
        for attempt in range(3):  # a kept-alive connection the node closed meanwhile
            try:
                return await pair_once(i)
            except httpx.TransportError:
                if attempt == 2:  # the last of three
                    raise
        raise AssertionError  # unreachable

    async def pair_once(i: int) -> tuple[str, str]:
        http = clients[i % len(clients)]
        async with gate:
            made = await http.post(f"{API}/pairing-tokens", json={}, headers=headers)
            made.raise_for_status()
            paired = await http.post(
                f"{API}/agent/pair",
                json={
                    "pairing_token": made.json()["token"],
                    "serial_number": f"SCALE-{i}",
                    "device_type": "kl520",
                    "name": f"scale {i}",
                },
            )
            paired.raise_for_status()
            return str(paired.json()["device_id"]), str(paired.json()["session_token"])

    return list(await asyncio.gather(*(pair(i) for i in range(n))))


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """The CPU seconds (user + system) process ``pid`` has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until(predicate: Any, limit: float = 600, step: float = 0.05) -> float:
    """Seconds until ``await predicate()`` is true (polled every ``step`` s; bounded).

    The API is polled every 0.25 s (the status batch interval): a poll lists every device,
    and polling it faster would add its own cost to the server CPU measured in the storm.
    """
    started = time.perf_counter()
    while not await predicate():
        if time.perf_counter() - started > limit:
            raise RuntimeError("the scale bench waited too long")
        await asyncio.sleep(step)
    return time.perf_counter() - started


@contextlib.contextmanager
def serve(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run `visiona serve` on ``port`` with ``env`` until healthy; stop it (SIGTERM) after.

    Its log is appended to :func:`log_path`."""
    log = log_path().open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "visiona", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("visiona serve did not become healthy")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=60)
        finally:
            log.close()


def log_path() -> Path:
    """Where the servers' log goes: ``BENCH_SCALE_LOG`` (kept), else a file of this run."""
    kept = os.environ.get("BENCH_SCALE_LOG")
    return Path(kept) if kept else Path(tempfile.gettempdir()) / f"bench-scale-{os.getpid()}.log"


def log_summary() -> str:
    """Warnings, errors and tracebacks the servers logged (the file is removed unless kept)."""
    path = log_path()
    if not path.exists():
        return "server log: empty"
    text = path.read_text(errors="replace")
    if not os.environ.get("BENCH_SCALE_LOG"):
        path.unlink()
    counts = {
        level: sum(f" {level} " in line for line in text.splitlines())
        for level in ("WARNING", "ERROR", "CRITICAL")
    }
    counts["tracebacks"] = text.count("Traceback (most recent call last)")
    return f"server log: {counts}"


async def online(http: httpx.AsyncClient, headers: dict[str, str]) -> int:
    """How many devices the API lists as online (every page)."""
    count, cursor = 0, None
    while True:
        params: dict[str, Any] = {"limit": 200, "remote_status": "online"}
        if cursor:
            params["cursor"] = cursor
        body = (await http.get(f"{API}/devices", params=params, headers=headers)).json()
        count += len(body["items"])
        cursor = body.get("next_cursor")
        if not cursor:
            return count


async def _p50(http: httpx.AsyncClient, device_id: str, headers: dict[str, str]) -> float:
    times = []
    for _ in range(PROXIED):
        started = time.perf_counter()
        response = await http.get(f"{API}/devices/{device_id}/proxy/ping", headers=headers)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    return sorted(times)[len(times) // 2] * 1000


def _upgrades(metrics: str) -> str:
    found = re.findall(r'visiona_tunnel_upgrades_total\{answer="([^"]+)"\} ([0-9.e+]+)', metrics)
    return ", ".join(f"{a}: {int(float(v))}" for a, v in found)


async def sign_in(http: httpx.AsyncClient, email: str) -> dict[str, str]:
    """Register ``email`` (its own organisation) and sign in; the API headers."""
    body = {"email": email, "password": "bench password 123", "name": "Bench"}
    await http.post(f"{API}/auth/register", json=body)
    login = await http.post(
        f"{API}/auth/login", json={"email": body["email"], "password": body["password"]}
    )
    login.raise_for_status()
    return {"Authorization": f"Bearer {login.json()['token']}"}


async def _visiona(env: dict[str, str]) -> list[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    fleet = Fleet(base.replace("http://", "ws://") + f"{API}{TUNNEL_PATH}")
    with serve(env, port) as proc:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            headers = await sign_in(http, "scale@example.com")
            started = time.perf_counter()
            devices = await pair_devices([http], headers, N)
            lines.append(f"pair {N}: {time.perf_counter() - started:.2f} s")
            rss0, cpu0 = rss_kib(proc.pid), cpu_seconds(proc.pid)
            fleet.start([devices[0][1]])
            await until(lambda: is_true(fleet.up == 1))
            p50_one = await _p50(http, devices[0][0], headers)

            started = time.perf_counter()
            cpu_before = cpu_seconds(proc.pid)
            fleet.start([token for _, token in devices[1:]])
            agents_up = await until(lambda: is_true(fleet.up == N))
            api_online = agents_up + await until(
                lambda: equals(online(http, headers), N), step=0.25
            )
            storm_cpu = (cpu_seconds(proc.pid) - cpu_before) / max(1, N - 1) * 1000
            lines.append(
                f"storm of {N}: all up {agents_up:.2f} s (agents), online {api_online:.2f} s "
                f"(API); server CPU {storm_cpu:.2f} ms per tunnel"
            )
            await asyncio.sleep(1)
            cpu1 = cpu_seconds(proc.pid)
            await asyncio.sleep(IDLE_SECONDS)
            idle = (cpu_seconds(proc.pid) - cpu1) / IDLE_SECONDS * 100
            rss = (rss_kib(proc.pid) - rss0) / N
            lines.append(
                f"idle with {N}: {idle:.2f} % of a core ({idle * 1000 / N:.2f} % per 1,000); "
                f"RSS {rss:.1f} KiB per tunnel (baseline CPU before: {cpu0:.1f} s)"
            )
            p50_n = await _p50(http, devices[0][0], headers)
            lines.append(
                f"proxied p50: {p50_n:.2f} ms with {N} up vs {p50_one:.2f} ms with 1 "
                f"({p50_n / p50_one:.2f}x)"
            )
            metrics = (await http.get("/metrics")).text
            lines.append(f"upgrade answers (server): {_upgrades(metrics)}")

            os.kill(proc.pid, signal.SIGTERM)
            stopping = time.perf_counter()
            await asyncio.to_thread(proc.wait, 120)
            stopped = time.perf_counter() - stopping
        spawned = time.perf_counter()
        with serve(env, port):
            restarted = time.perf_counter()
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                again = await until(lambda: equals(online(http, headers), N), step=0.25)
            lines.append(
                f"SIGTERM: exit after {stopped:.2f} s; all {N} online "
                f"{time.perf_counter() - restarted:.2f} s after the new process answered "
                f"/healthz, {time.perf_counter() - spawned:.2f} s after it was started "
                f"(API: {again:.2f} s)"
            )
            lines.append(f"upgrade answers (agents): {dict(sorted(fleet.answers.items()))}")
            lines.append(await _records(env["VISIONA_DATABASE_URL"]))
            await fleet.close()
    return lines


async def _records(dsn: str) -> str:
    """What the trail holds of the run: every tunnel up and down recorded (none dropped)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT action, detail->>'reason' AS reason, count(*) AS n FROM audit_events "
            "WHERE action LIKE 'tunnel.%' GROUP BY 1, 2 ORDER BY 1, 2"
        )
    finally:
        await conn.close()
    found = {(r["action"], r["reason"]): int(r["n"]) for r in rows}
    up = found.get(("tunnel.connected", None), 0)
    drained = found.get(("tunnel.disconnected", "server shutting down"), 0)
    left = found.get(("tunnel.disconnected", RESTART_REASON), 0)
    others = {f"{a} ({r})": n for (a, r), n in found.items()} if len(found) > 2 else {}
    return (
        f"records: tunnel.connected {up} (expected {2 * N}: both starts), "
        f"disconnected by the drain {drained} (expected {N}), left over at restart {left} "
        f"(expected 0){'; all: ' + str(others) if others else ''}"
    )


async def _go(binary: Path) -> list[str]:
    # the reference pings each tunnel as often as visiona serve does (hashicorp's own
    # default is every 30 s: half the idle work)
    hub = Proc(str(binary), "-mode", "hub", "-keepalive", f"{PING_INTERVAL}s")
    try:
        port = hub.event("listening")["port"]
        pid = hub.proc.pid
        fleet = Fleet(f"ws://127.0.0.1:{port}{API}{TUNNEL_PATH}")
        rss0 = rss_kib(pid)
        cpu0 = cpu_seconds(pid)
        started = time.perf_counter()
        fleet.start([f"vst_go-{i}" for i in range(N)])
        up = await until(lambda: is_true(fleet.up == N))
        storm_cpu = (cpu_seconds(pid) - cpu0) / N * 1000
        await asyncio.sleep(1)
        cpu1 = cpu_seconds(pid)
        await asyncio.sleep(IDLE_SECONDS)
        idle = (cpu_seconds(pid) - cpu1) / IDLE_SECONDS * 100
        rss = (rss_kib(pid) - rss0) / N
        await fleet.close()
        del started
        return [
            f"Go reference, storm of {N}: all up {up:.2f} s; {storm_cpu:.2f} ms CPU per tunnel",
            f"Go reference idle with {N}: {idle:.2f} % of a core (pinging every "
            f"{PING_INTERVAL:g} s, as visiona); RSS {rss:.1f} KiB per tunnel",
        ]
    finally:
        hub.stop()


async def is_true(value: bool) -> bool:
    """``value``, awaitable (a predicate for :func:`until`)."""
    return value


async def equals(count: Any, expected: int) -> bool:
    """Whether the awaited ``count`` is ``expected`` (a predicate for :func:`until`)."""
    return bool(await count == expected)


def server_env(
    pg: PostgresServer, redis: RedisServer, database: str, storage: Path
) -> dict[str, str]:
    """A migrated database ``database`` on ``pg`` and the environment of a `visiona serve`
    on it, ``redis`` and files under ``storage``: this process's environment without its
    ``VISIONA_`` settings, logs at WARNING, the pairing and login rate limits lifted."""
    url = pg.create_database(database)
    migrate.upgrade(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONA_")}
    env.update(
        {
            "VISIONA_DATABASE_URL": url.replace("+asyncpg", ""),
            "VISIONA_REDIS_URL": redis.url,
            "VISIONA_STORAGE_URL": storage.as_uri(),
            "VISIONA_LOG_LEVEL": "WARNING",
            "VISIONA_PAIR_RATE_LIMIT": "1000000",
            "VISIONA_LOGIN_RATE_LIMIT_PER_ADDRESS": "1000000",
        }
    )
    return env


def main() -> None:
    """Run the scenario on visiona and on the Go reference; print the figures."""
    binary = build_tunnel_peer()
    pg, redis = PostgresServer(), RedisServer()
    pg.start()
    redis.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            env = server_env(pg, redis, "bench_scale", Path(tmp))
            env["VISIONA_TUNNEL_DRAIN_WINDOW"] = "2"
            lines = asyncio.run(_visiona(env))
        lines.append(log_summary())
        lines += asyncio.run(_go(binary))
    finally:
        redis.cleanup()
        pg.cleanup()
    print(f"N = {N} tunnels (BENCH_SCALE_N)")
    for line in lines:
        print(f"  {line}")
