"""A model rolled out to a fleet on one node (issue 23): time, bound, CPU, proxied latency.

N lightweight agents in this process (:class:`bench.bench_scale.Fleet`: the agent's own
picows WebSocket and yamux session) are enrolled in bulk with one enrollment key (which
tags them ``bench=rollout``) against a real ``visiona serve`` on PostgreSQL + Redis.
Each answers a deployment stream as ``visiona agent`` does (:mod:`visiona.agent.deploy`:
the same checks of the head, the same JSON answers, 422 ``sha256_mismatch`` when the
bytes do not match the ``X-Visiona-Sha256`` header) but hashes the body as it arrives
instead of storing it (1 MiB reads, hashlib incremental: an agent never holds the
file), then reports the model it runs on ``POST /agent/status`` as the agent does; any
other stream (a proxied request) gets a tiny HTTP answer.

Two windows, in the same run and with the same polling:

- *idle*: every 0.2 s a tiny proxied request (``GET /devices/{id}/proxy/ping``) and a
  poll of the rollouts API and ``/metrics``, for ``BENCH_ROLLOUT_IDLE`` seconds;
- *rollout*: a model of ``BENCH_ROLLOUT_MIB`` MiB (random bytes) rolled out to every
  device by selector (a canary of ``BENCH_ROLLOUT_CANARY`` then batches of
  ``BENCH_ROLLOUT_BATCH``, no failure allowed) and the same sampling until it ends; the
  proxied request goes to an agent not receiving a file at that moment.

Printed: enrolment and connect times; time to complete (the server's ``created_at`` to
``finished_at``); peak transfers in flight (the rollout's ``transferring`` count, sampled,
and at the agents, exact) against ``VISIONA_ROLLOUT_MAX_TRANSFERS`` (kept from the
environment, else the server's default); the server's CPU (from /proc) and peak RSS;
proxied p50/p99 idle vs during; the bytes verified at the agents; any failure.

``BENCH_ROLLOUT_N`` sets N (default 1,000), ``BENCH_ROLLOUT_MIB`` the model's size
(default 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import h11
import httpx

from bench.bench_scale import (
    ANSWER,
    Fleet,
    cpu_seconds,
    equals,
    is_true,
    online,
    rss_kib,
    serve,
    server_env,
    sign_in,
    until,
)
from bench.support import LoadResult
from testkit.servers import PostgresServer, RedisServer, free_port
from visiona.agent.deploy import RESERVED
from visiona.kit.fdlimit import raise_nofile_limit
from visiona.wire import (
    API_PREFIX,
    ENROLL_PATH,
    MODELS_PATH,
    SHA256_HEADER,
    STATUS_PATH,
    TUNNEL_PATH,
)
from visiona.yamux import Config, Stream, YamuxError

API = API_PREFIX
N = int(os.environ.get("BENCH_ROLLOUT_N", "1000"))
MIB = int(os.environ.get("BENCH_ROLLOUT_MIB", "16"))
IDLE_SECONDS = float(os.environ.get("BENCH_ROLLOUT_IDLE", "20"))
CANARY = int(os.environ.get("BENCH_ROLLOUT_CANARY", "10"))
BATCH = os.environ.get("BENCH_ROLLOUT_BATCH", "25%")
#: how long the rollout may take before the bench gives up
LIMIT = float(os.environ.get("BENCH_ROLLOUT_LIMIT", "3600"))
#: the sampling period of both windows (proxied request, API poll, CPU)
PERIOD = 0.2
TAG = ("bench", "rollout")
CHIP = "kl520"
#: the agent's own yamux receive window (``visiona agent --stream-window``'s default)
STREAM_WINDOW = 16 * 1024 * 1024
_FIRST_READ = 64 * 1024
_HEAD_LIMIT = 16 * 1024
_READ_SIZE = 1024 * 1024
_ENROLLING = 16
_END_STATES = frozenset({"completed", "paused", "cancelled", "failed"})
REPRODUCE = "BENCH_ROLLOUT_N=1000 .venv/bin/python -m bench rollout"


class RefusedError(Exception):
    """A deployment the agent answers with an error: ``status`` and ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        """Remember the answer to give."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Request:
    model_id: uuid.UUID
    length: int
    sha256: str


async def _request_head(stream: Stream, data: bytes) -> tuple[_Request, bytes]:
    """The deployment's head, checked as ``visiona agent`` checks it (``visiona.agent.
    deploy``: at most 16 KiB, a UUID after ``/visiona/models/``, ``Content-Length``, a hex
    ``X-Visiona-Sha256``), and the body bytes already read."""
    while b"\r\n\r\n" not in data:
        if len(data) > _HEAD_LIMIT:
            raise RefusedError(400, "bad_request", "The request head is too large.")
        more = await stream.read(_FIRST_READ)
        if not more:
            raise asyncio.IncompleteReadError(data, None)
        data += more
    end = data.index(b"\r\n\r\n") + 4
    if end > _HEAD_LIMIT:
        raise RefusedError(400, "bad_request", "The request head is too large.")
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data[:end])
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as err:
        raise RefusedError(400, "bad_request", f"Invalid request: {err}") from err
    if not isinstance(event, h11.Request):
        raise RefusedError(400, "bad_request", "Invalid request.")
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers}
    target = event.target.decode("latin-1").split("?", 1)[0]
    try:
        model_id = uuid.UUID(target.removeprefix(MODELS_PATH))
    except ValueError:
        raise RefusedError(400, "bad_request", "The model id is not a UUID.") from None
    length = headers.get("content-length", "")
    sha256 = headers.get(SHA256_HEADER.lower(), "").strip().lower()
    if not length.isdigit():
        raise RefusedError(400, "bad_request", "Content-Length is required.")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise RefusedError(400, "bad_request", f"{SHA256_HEADER} must be a hex sha256.")
    return _Request(model_id, int(length), sha256), data[end:]


_REASONS = {200: "OK", 400: "Bad Request", 422: "Unprocessable Content"}


def _reply(stream: Stream, status: int, body: dict[str, Any]) -> None:
    """The agent's answer to a deployment: a small JSON body, then the end of the stream."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    stream.write(head + payload)
    stream.write_eof()


@dataclass
class Agents:
    """What the in-process agents do with a stream, and what they counted."""

    http: httpx.AsyncClient
    #: session token → device id
    devices: dict[str, str]
    receiving: set[str] = field(default_factory=set)
    peak: int = 0
    verified_bytes: int = 0
    #: device id → deployments that ended with the 200 answer
    deployed: Counter[str] = field(default_factory=Counter)
    #: error code → deployments answered with it (or ``stream`` when it broke)
    failures: Counter[str] = field(default_factory=Counter)
    #: status reports answered anything but 204
    report_failures: Counter[str] = field(default_factory=Counter)
    #: session token → the model of the last successful deployment, as the agent keeps it
    current: dict[str, dict[str, str]] = field(default_factory=dict)
    _reports: set[asyncio.Task[None]] = field(default_factory=set)

    def on_up(self, token: str) -> None:
        """A tunnel is up: report the status, as ``visiona agent`` does on each connect."""
        self._report(token)

    async def handle(self, stream: Stream, token: str) -> None:
        """Read a stream's first bytes: a deployment, or a tiny proxied request."""
        try:
            head = await stream.read(_FIRST_READ)
            while head and len(head) < len(RESERVED) and RESERVED.startswith(head):
                more = await stream.read(_FIRST_READ)
                if not more:
                    break
                head += more
            if head.startswith(RESERVED):
                await self._deployment(stream, head, token)
                return
            while b"\r\n\r\n" not in head:
                more = await stream.read(_FIRST_READ)
                if not more:
                    stream.close()
                    return
                head += more
            stream.write(ANSWER)
            stream.write_eof()
            await stream.drain()
        except (YamuxError, asyncio.IncompleteReadError):
            stream.reset()

    async def _deployment(self, stream: Stream, head: bytes, token: str) -> None:
        """:func:`visiona.agent.deploy.handle_deployment`, hashing instead of storing."""
        device_id = self.devices[token]
        self.receiving.add(device_id)
        self.peak = max(self.peak, len(self.receiving))
        try:
            try:
                status, body = 200, await self._receive(stream, head, token)
            except RefusedError as err:
                self.failures[err.code] += 1
                status, body = err.status, {"error": {"code": err.code, "message": err.message}}
            _reply(stream, status, body)
            await stream.drain()
        except (YamuxError, asyncio.IncompleteReadError):
            self.failures["stream"] += 1
            stream.reset()
        finally:
            self.receiving.discard(device_id)
            stream.close()

    async def _receive(self, stream: Stream, head: bytes, token: str) -> dict[str, Any]:
        request, first = await _request_head(stream, head)
        if len(first) > request.length:
            raise RefusedError(400, "bad_request", "More data than Content-Length.")
        digest = hashlib.sha256(first)
        left = request.length - len(first)
        while left:
            chunk = await stream.read(min(left, _READ_SIZE))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", left)
            digest.update(chunk)
            left -= len(chunk)
        if digest.hexdigest() != request.sha256:
            raise RefusedError(422, "sha256_mismatch", "The file's sha256 does not match.")
        self.verified_bytes += request.length
        self.deployed[self.devices[token]] += 1
        # as the agent's on_deployed: remember the model and wake the status reporter
        self.current[token] = {"id": str(request.model_id), "sha256": request.sha256}
        self._report(token)
        return {
            "model_id": str(request.model_id),
            "path": f"/dev/null/{request.model_id}.nef",
            "size": request.length,
            "sha256": request.sha256,
            "hook": "none",
        }

    def _report(self, token: str) -> None:
        task = asyncio.get_running_loop().create_task(self._post_status(token))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _post_status(self, token: str) -> None:
        body: dict[str, object] = {"usb_status": "online", "tcp_ports": []}
        if token in self.current:
            body["current_model"] = self.current[token]
        headers = {"Authorization": f"Bearer {token}"}
        try:
            response = await self.http.post(f"{API}{STATUS_PATH}", json=body, headers=headers)
        except httpx.HTTPError as err:
            self.report_failures[type(err).__name__] += 1
            return
        if response.status_code != 204:
            self.report_failures[str(response.status_code)] += 1

    async def reported(self) -> None:
        """Wait for the status reports in flight."""
        while self._reports:
            await asyncio.gather(*list(self._reports), return_exceptions=True)


@dataclass
class Window:
    """One sampling window: proxied latencies, the server's CPU and what the API showed."""

    seconds: float = 0.0
    cpu: float = 0.0
    own_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    rss_peak_kib: int = 0
    transferring_peak: int = 0
    streams_peak: int = 0
    #: ``visiona_tunnel_bytes_to_devices`` at the first poll, and its growth since
    first_sent: int = 0
    bytes_sent: int = 0
    polls: int = 0
    rollout: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_percent(self) -> float:
        """The server's CPU over the window, in percent of one core."""
        return self.cpu / self.seconds * 100 if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """Proxied latency percentile ``q`` in ms."""
        if not self.latencies:
            return float("nan")
        return LoadResult(len(self.latencies), self.seconds, self.latencies).pct(q)


def _gauge(metrics: str, name: str) -> int:
    found = re.search(rf"^{name} ([0-9.e+]+)$", metrics, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


@dataclass
class Sampler:
    """Every :data:`PERIOD` s: a proxied request to an agent not receiving a file, and a
    poll of the rollout (or the rollouts list), ``/metrics`` and /proc.

    The server ``pid`` is polled through ``http``; proxied requests go through ``probe``
    (their own keep-alive connection) to the first device of ``order`` not receiving.
    """

    http: httpx.AsyncClient
    probe: httpx.AsyncClient
    headers: dict[str, str]
    pid: int
    agents: Agents
    order: list[str]

    def _target(self) -> str:
        busy = self.agents.receiving
        return next((d for d in self.order if d not in busy), self.order[0])

    async def _probe_loop(self, window: Window, done: asyncio.Event) -> None:
        while not done.is_set():
            started = time.perf_counter()
            try:
                response = await self.probe.get(
                    f"{API}/devices/{self._target()}/proxy/ping", headers=self.headers
                )
            except httpx.HTTPError as err:
                window.refused[type(err).__name__] += 1
            else:
                if response.status_code == 200:
                    window.latencies.append(time.perf_counter() - started)
                else:
                    window.refused[str(response.status_code)] += 1
            await _tick(started, done)

    async def _poll_loop(self, window: Window, done: asyncio.Event, rollout: str | None) -> None:
        path = f"{API}/rollouts/{rollout}" if rollout else f"{API}/rollouts"
        while not done.is_set():
            started = time.perf_counter()
            body = (await self.http.get(path, headers=self.headers)).json()
            metrics = (await self.http.get("/metrics")).text
            window.polls += 1
            window.streams_peak = max(
                window.streams_peak, _gauge(metrics, "visiona_tunnel_streams_open")
            )
            sent = _gauge(metrics, "visiona_tunnel_bytes_to_devices")
            window.first_sent = window.first_sent if window.polls > 1 else sent
            window.bytes_sent = sent - window.first_sent
            window.rss_peak_kib = max(window.rss_peak_kib, rss_kib(self.pid))
            if rollout:
                window.rollout = body
                window.transferring_peak = max(
                    window.transferring_peak, body["counts"]["transferring"]
                )
                if body["state"] in _END_STATES:
                    done.set()
                    return
            await _tick(started, done)

    async def run(self, *, seconds: float | None = None, rollout: str | None = None) -> Window:
        """Sample for ``seconds``, or until ``rollout`` ends (bounded by :data:`LIMIT`)."""
        window = Window()
        done = asyncio.Event()
        cpu0, own0, started = cpu_seconds(self.pid), time.process_time(), time.perf_counter()
        tasks = [
            asyncio.create_task(self._probe_loop(window, done)),
            asyncio.create_task(self._poll_loop(window, done, rollout)),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), seconds if seconds is not None else LIMIT)
        window.seconds = time.perf_counter() - started
        window.cpu = cpu_seconds(self.pid) - cpu0
        window.own_cpu = time.process_time() - own0
        done.set()
        await asyncio.gather(*tasks)
        if rollout is not None and window.rollout.get("state") not in _END_STATES:
            raise RuntimeError(f"the rollout did not end within {LIMIT:g} s")
        return window


async def _tick(started: float, done: asyncio.Event) -> None:
    """Sleep until :data:`PERIOD` s after ``started`` (at once when ``done`` is set)."""
    wait = PERIOD - (time.perf_counter() - started)
    if wait > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), wait)


async def _enroll(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    """One enrollment key for N PCs, N enrolments (16 at a time): token → device id."""
    made = await http.post(
        f"{API}/enrollment-keys",
        json={
            "name": "rollout bench",
            "max_uses": N,
            "expires_in_hours": 24,
            "tags": dict([TAG]),
            "name_template": "bench-{n}",
        },
        headers=headers,
    )
    made.raise_for_status()
    key = made.json()["key"]
    gate = asyncio.Semaphore(_ENROLLING)

    async def enroll(i: int) -> tuple[str, str]:
        async with gate:
            enrolled = await http.post(
                f"{API}{ENROLL_PATH}",
                json={
                    "enrollment_key": key,
                    "serial_number": f"ROLLOUT-{i:05d}",
                    "device_type": CHIP,
                },
            )
            enrolled.raise_for_status()
            return str(enrolled.json()["session_token"]), str(enrolled.json()["device_id"])

    return dict(await asyncio.gather(*(enroll(i) for i in range(N))))


async def _upload(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    content = os.urandom(MIB * 1024 * 1024)
    response = await http.post(
        f"{API}/models",
        headers=headers,
        data={"target_chip": CHIP, "name": f"rollout bench {MIB} MiB"},
        files={"file": ("bench.nef", content, "application/octet-stream")},
    )
    response.raise_for_status()
    model: dict[str, Any] = response.json()
    if model["sha256"] != hashlib.sha256(content).hexdigest():
        raise RuntimeError("the server recorded another sha256 than the file's")
    return model


async def _running_model(http: httpx.AsyncClient, headers: dict[str, str], model: str) -> int:
    """Devices of the fleet whose record shows ``model`` as the one they run."""
    count, cursor = 0, None
    while True:
        params: dict[str, Any] = {"limit": 200, "selector": "=".join(TAG)}
        if cursor:
            params["cursor"] = cursor
        body = (await http.get(f"{API}/devices", params=params, headers=headers)).json()
        count += sum(1 for d in body["items"] if (d.get("current_model") or {}).get("id") == model)
        cursor = body.get("next_cursor")
        if not cursor:
            return count


async def _failed_devices(
    http: httpx.AsyncClient, headers: dict[str, str], rollout: str
) -> list[str]:
    params: dict[str, str | int] = {"state": "failed", "limit": 5}
    found = await http.get(f"{API}/rollouts/{rollout}/devices", params=params, headers=headers)
    return [f"{d['device_id']}: {d['error']}" for d in found.json()["items"]]


def _seconds_between(start: str, end: str | None) -> float:
    if end is None:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


async def _run(env: dict[str, str]) -> list[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    with serve(env, port) as proc:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with (
            httpx.AsyncClient(base_url=base, timeout=60) as http,
            httpx.AsyncClient(base_url=base, timeout=60) as probe,
            httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as reports,
        ):
            headers = await sign_in(http, "rollout@example.com")
            started = time.perf_counter()
            devices = await _enroll(http, headers)
            enrolled = time.perf_counter() - started
            agents = Agents(reports, devices)
            fleet = Fleet(
                base.replace("http://", "ws://") + f"{API}{TUNNEL_PATH}",
                handler=agents.handle,
                on_up=agents.on_up,
                config=Config(enable_keepalive=False, max_stream_window=STREAM_WINDOW),
            )
            started = time.perf_counter()
            fleet.start(list(devices))
            try:
                up = await until(lambda: is_true(fleet.up == N))
                up += await until(lambda: equals(online(http, headers), N), step=0.25)
                await agents.reported()
                lines.append(f"{'enrol N with one key (16 at a time)':<44}{enrolled:>9.2f} s")
                lines.append(f"{'connect N, all online (API)':<44}{up:>9.2f} s")
                await asyncio.sleep(2)  # let the connect storm's last work settle
                order = sorted(devices.values())
                sampler = Sampler(http, probe, headers, proc.pid, agents, order)
                idle = await sampler.run(seconds=IDLE_SECONDS)

                model = await _upload(http, headers)
                body = {
                    "model_id": model["id"],
                    "selector": "=".join(TAG),
                    "canary": CANARY,
                    "batch": BATCH,
                    "max_failure_percent": 0,
                }
                created = await http.post(f"{API}/rollouts", json=body, headers=headers)
                created.raise_for_status()
                rollout_id = created.json()["id"]
                during = await sampler.run(rollout=rollout_id)
                rollout = during.rollout
                await agents.reported()
                running = await _running_model(http, headers, model["id"])
                failed = []
                if rollout["counts"]["failed"]:
                    failed = await _failed_devices(http, headers, rollout_id)
            finally:
                await fleet.close()
    lines += _table(idle, during, agents, rollout=rollout, running=running, failed=failed)
    return lines


def _table(
    idle: Window,
    during: Window,
    agents: Agents,
    *,
    rollout: dict[str, Any],
    running: int,
    failed: list[str],
) -> list[str]:
    counts = rollout["counts"]
    took = _seconds_between(rollout["created_at"], rollout.get("finished_at"))
    mib = agents.verified_bytes / 1024 / 1024
    twice = sum(1 for n in agents.deployed.values() if n > 1)
    max_transfers = os.environ.get("VISIONA_ROLLOUT_MAX_TRANSFERS", "8 (default)")
    lines = [
        f"{'rollout state':<44}{rollout['state']:>9}"
        + (f"  ({rollout['reason']})" if rollout.get("reason") else ""),
        f"{'time to complete (created → finished)':<44}{took:>9.2f} s"
        f"  (seen by polling: {during.seconds:.2f} s)",
        f"{'peak transfers in flight (API, sampled)':<44}{during.transferring_peak:>9}"
        f"  (VISIONA_ROLLOUT_MAX_TRANSFERS={max_transfers})",
        f"{'peak transfers in flight (agents, exact)':<44}{agents.peak:>9}"
        "  (files arriving at once)",
        f"{'peak tunnel streams open (/metrics)':<44}{during.streams_peak:>9}"
        f"  (idle: {idle.streams_peak})",
        f"{'devices succeeded / failed / skipped':<44}"
        f"{counts['succeeded']:>9} / {counts['failed']} / {counts['skipped']}"
        f"  (of {rollout['devices']}; batches: {len(rollout['batches'])})",
        f"{'verified by sha256 at the agents':<44}{mib:>9.0f} MiB"
        f"  ({mib / during.seconds:.1f} MiB/s; deployed twice: {twice})",
        f"{'devices whose record shows the model':<44}{running:>9}",
        f"{'sent to agents (/metrics, yamux included)':<44}"
        f"{during.bytes_sent / 1024 / 1024:>9.0f} MiB",
        f"{'server CPU during the rollout':<44}{during.cpu:>9.2f} s"
        f"  ({during.cpu * 1000 / max(mib, 1):.2f} ms per MiB delivered)",
        "",
        f"{'':<44}{'idle':>9}{'rollout':>11}{'ratio':>9}",
        _row("proxied p50 (ms)", idle.pct(50), during.pct(50)),
        _row("proxied p99 (ms)", idle.pct(99), during.pct(99)),
        _row("server CPU (% of a core)", idle.cpu_percent, during.cpu_percent),
        _row("server RSS peak (MiB)", idle.rss_peak_kib / 1024, during.rss_peak_kib / 1024),
        _row(
            "agents' process CPU (% of a core)",
            idle.own_cpu / idle.seconds * 100,
            during.own_cpu / during.seconds * 100,
        ),
        f"{'proxied samples':<44}{len(idle.latencies):>9}{len(during.latencies):>11}",
    ]
    problems = {
        "proxied answers not 200 (idle)": dict(idle.refused),
        "proxied answers not 200 (rollout)": dict(during.refused),
        "agents' deployment failures": dict(agents.failures),
        "status reports not 204": dict(agents.report_failures),
    }
    for label, found in problems.items():
        lines.append(f"{label:<44}{found or 'none'}")
    lines.extend(f"failed device {line}" for line in failed)
    return lines


def _row(label: str, idle: float, during: float) -> str:
    ratio = during / idle if idle else float("nan")
    return f"{label:<44}{idle:>9.2f}{during:>11.2f}{ratio:>8.2f}x"


def main() -> None:
    """Enrol and connect N agents, sample idle, roll the model out; print the figures."""
    _, after = raise_nofile_limit()
    if after != -1 and after < 2 * N + 256:
        print(f"warning: {after} file descriptors for {N} agents (raise `ulimit -n`)")
    pg, redis = PostgresServer(), RedisServer()
    pg.start()
    redis.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
            env = server_env(pg, redis, "bench_rollout", Path(tmp))
            env["VISIONA_ENROLL_RATE_LIMIT"] = "1000000"
            if "VISIONA_ROLLOUT_MAX_TRANSFERS" in os.environ:
                env["VISIONA_ROLLOUT_MAX_TRANSFERS"] = os.environ["VISIONA_ROLLOUT_MAX_TRANSFERS"]
            lines = _asyncio_run(_run(env))
    finally:
        redis.cleanup()
        pg.cleanup()
    print(
        f"rollout of a {MIB} MiB model to N = {N} agents (BENCH_ROLLOUT_N, BENCH_ROLLOUT_MIB); "
        f"canary {CANARY}, batches of {BATCH}; samples every {PERIOD:g} s, "
        f"idle window {IDLE_SECONDS:g} s"
    )
    for line in lines:
        print(f"  {line}".rstrip())
    print(f"reproduce: {REPRODUCE}")


def _asyncio_run(main: Any) -> list[str]:
    """Run ``main`` on uvloop, as ``visiona agent`` does."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        result: list[str] = runner.run(main)
    return result
