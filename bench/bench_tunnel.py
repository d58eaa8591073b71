"""The tunnel end to end, each figure next to its references measured in the same run.

Paths, all driven by the same Go load client (``tunnelpeer -mode load``) against the
same Go origin (``tunnelpeer -mode origin``, the device's local HTTP service):

* **python**: ``visiona serve`` + ``visiona agent`` (subprocesses) — client → proxy →
  WebSocket + yamux → agent → origin;
* **go pair**: ``tunnelpeer -mode cloud`` + ``tunnelpeer -mode agent`` (hashicorp/yamux
  + gorilla/websocket from Debian's packages), the same shape;
* **direct**: the client straight to the origin.

Scenarios: a 1 GiB download (MB/s, median of ``ROUNDS``); 2,000 sequential tiny
requests with a new client connection each time (p50/p99); 8 parallel downloads
(aggregate MB/s); then N idle connected agents (default 1,000; the agent's own
WebSocket code, one process): server RSS per tunnel and server CPU while idle, twice:
with agents that ping every 30 s whatever they receive, each at a random phase (as
hashicorp/yamux's keepalive does: the server answers each ping in a wake-up of its
own, the worst case), then with this project's keepalive on the agents (it sends no
ping while the server's pings arrive, so the server's own pings, batched on its
wall-clock grid, are all there is). MB = 10^6 bytes.

Reproduce: ``.venv/bin/python -m bench tunnel`` (env ``TUNNEL_BENCH_GIB`` download
size in GiB, ``TUNNEL_BENCH_ROUNDS``, ``TUNNEL_BENCH_IDLE`` idle agents).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvloop

from testkit.gopeer import build_tunnel_peer
from testkit.servers import free_port
from visiona.agent.websocket import open_tunnel_socket
from visiona.yamux import Config, Session

GIB = 1024**3
BIG = int(float(os.environ.get("TUNNEL_BENCH_GIB", "1")) * GIB)
ROUNDS = int(os.environ.get("TUNNEL_BENCH_ROUNDS", "3"))
TINY = 2000
PARALLEL = 8
IDLE = int(os.environ.get("TUNNEL_BENCH_IDLE", "1000"))
IDLE_SECONDS = 20.0
AGENT_KEEPALIVE = 30.0  # the agent's default (hashicorp/yamux's too)
API = "/api/v1"


class Proc:
    """A subprocess printing JSON events on stdout."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        """Start ``args``."""
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
        )

    def event(self, name: str) -> dict[str, Any]:
        """The next event called ``name``."""
        if self.proc.stdout is None:
            raise RuntimeError("no stdout pipe")
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                event: dict[str, Any] = json.loads(line)
                if event.get("event") == name:
                    return event
        raise RuntimeError(f"{self.proc.args!r} exited before {name!r}")

    def stop(self) -> None:
        """Terminate and reap."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _load(
    binary: Path, url: str, *, n: int, c: int = 1, new_conn: bool = False, auth: str = ""
) -> dict[str, Any]:
    args = [str(binary), "-mode", "load", "-url", url, "-n", str(n), "-c", str(c)]
    if new_conn:
        args.append("-new-conn")
    if auth:
        args += ["-auth", auth]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=600).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if "error" in result:
        raise RuntimeError(f"load on {url}: {result['error']}")
    return result


@contextlib.contextmanager
def _visiona_serve(data_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONA_")}
    env.update(
        {
            "VISIONA_LOG_LEVEL": "WARNING",
            "VISIONA_DATA_DIR": str(data_dir),
            "VISIONA_PAIR_RATE_LIMIT": "1000000",
            "VISIONA_LOGIN_RATE_LIMIT_PER_ADDRESS": "1000000",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "visiona", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("visiona serve did not become healthy")
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _user(base: str) -> str:
    with httpx.Client(base_url=base) as http:
        body = {"email": "bench@example.com", "password": "bench password 123", "name": "B"}
        http.post(f"{API}/auth/register", json=body).raise_for_status()
        login = http.post(
            f"{API}/auth/login", json={"email": body["email"], "password": body["password"]}
        )
        login.raise_for_status()
        return str(login.json()["token"])


def _pairing_token(base: str, user_token: str) -> str:
    response = httpx.post(
        f"{base}{API}/pairing-tokens", headers={"Authorization": f"Bearer {user_token}"}, json={}
    )
    response.raise_for_status()
    return str(response.json()["token"])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _idle_agents(base: str, user_token: str, count: int) -> tuple[list[Any], list[Session]]:
    """Pair ``count`` devices and open their tunnels (the agent's own WebSocket code)."""
    sockets: list[Any] = []
    sessions: list[Session] = []
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        headers = {"Authorization": f"Bearer {user_token}"}

        async def one(i: int) -> None:
            async with gate:
                created = await http.post(f"{API}/pairing-tokens", json={}, headers=headers)
                paired = await http.post(
                    f"{API}/agent/pair",
                    json={
                        "pairing_token": created.json()["token"],
                        "serial_number": f"IDLE-{i}",
                        "device_type": "kl520",
                        "name": f"idle {i}",
                    },
                )
                paired.raise_for_status()
                token = paired.json()["session_token"]
                ws_url = base.replace("http://", "ws://") + f"{API}/agent/tunnel"
                socket = await open_tunnel_socket(ws_url, token)
                sockets.append(socket)
                # keepalive driven by the scenario (random phases, then the agents' own)
                config = Config(enable_keepalive=False)
                sessions.append(Session(socket.feed, client=False, config=config))

        await asyncio.gather(*(one(i) for i in range(count)))
    return sockets, sessions


def _random_phase_pings(sessions: list[Session]) -> list[asyncio.TimerHandle]:
    """Ping from each session every ``AGENT_KEEPALIVE`` s, each at its own random phase."""
    loop = asyncio.get_running_loop()
    handles: list[asyncio.TimerHandle] = []
    pending: set[asyncio.Future[float]] = set()

    def tick(index: int) -> None:
        session = sessions[index]
        if session.is_closed:
            return
        ping = asyncio.ensure_future(session.ping())
        pending.add(ping)
        ping.add_done_callback(pending.discard)
        handles[index] = loop.call_later(AGENT_KEEPALIVE, tick, index)

    for index in range(len(sessions)):
        phase = AGENT_KEEPALIVE * random.random()  # a phase, not a secret
        handles.append(loop.call_later(phase, tick, index))
    return handles


async def _cpu_percent(pid: int, seconds: float) -> float:
    cpu0 = _cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return (_cpu_seconds(pid) - cpu0) / seconds * 100


def _idle_figure(cpu: float, baseline: float, per_thousand: float) -> str:
    return f"{cpu:.2f} % ({(cpu - baseline) * per_thousand:.2f} % per thousand tunnels)"


def _idle_scenario(base: str, pid: int, user_token: str) -> list[str]:
    async def run() -> list[str]:
        baseline_rss = _rss_kib(pid)
        baseline_cpu = await _cpu_percent(pid, IDLE_SECONDS / 2)
        started = time.perf_counter()
        _sockets, sessions = await _idle_agents(base, user_token, IDLE)
        setup = time.perf_counter() - started
        handles = _random_phase_pings(sessions)
        await asyncio.sleep(2)
        rss = _rss_kib(pid)
        hashicorp_style = await _cpu_percent(pid, IDLE_SECONDS)
        for handle in handles:
            handle.cancel()
        for session in sessions:  # `visiona agent`'s keepalive: silent while pinged
            session.keep_alive(AGENT_KEEPALIVE, 10.0, on_miss=lambda _misses: True)
        await asyncio.sleep(2)
        visiona_style = await _cpu_percent(pid, IDLE_SECONDS)
        alive = sum(not s.is_closed for s in sessions)
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        per_tunnel = (rss - baseline_rss) / max(1, alive)
        per_thousand = 1000 / max(1, alive)
        return [
            f"{alive} idle agents connected (paired + upgraded in {setup:.1f}s)",
            f"  server RSS {baseline_rss / 1024:.1f} MiB with none -> {rss / 1024:.1f} MiB: "
            f"{per_tunnel:.1f} KiB per tunnel",
            f"  server CPU while idle over {IDLE_SECONDS:.0f}s, reference {baseline_cpu:.2f} % "
            "of one core with no tunnel:",
            f"    agents pinging every {AGENT_KEEPALIVE:.0f} s at random phases (hashicorp-style): "
            f"{_idle_figure(hashicorp_style, baseline_cpu, per_thousand)}",
            "    agents with visiona's keepalive (no ping while pinged):  "
            f"{_idle_figure(visiona_style, baseline_cpu, per_thousand)}",
        ]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run())


def _wait_online(base: str, user_token: str) -> str:
    headers = {"Authorization": f"Bearer {user_token}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        items = httpx.get(f"{base}{API}/devices", headers=headers).json()["items"]
        online = [d for d in items if d["remote_status"] == "online"]
        if online:
            return str(online[0]["id"])
        time.sleep(0.2)
    raise RuntimeError("the Python agent did not come online")


@contextlib.contextmanager
def go_pair(binary: Path, tmp: Path) -> Iterator[tuple[str, str, Proc, Proc]]:
    """The Go origin, cloud and agent, connected.

    Yields (origin host:port, cloud URL, cloud, agent); all stopped after.
    """
    procs: list[Proc] = []
    try:
        origin = Proc(str(binary), "-mode", "origin")
        procs.append(origin)
        origin_addr = f"127.0.0.1:{origin.event('listening')['port']}"
        go_cloud = Proc(str(binary), "-mode", "cloud")
        procs.append(go_cloud)
        go_url = f"http://127.0.0.1:{go_cloud.event('listening')['port']}"
        go_agent = Proc(
            str(binary), "-mode", "agent", "-server", go_url, "-token", "vpt_bench",
            "-forward", origin_addr, "-session-file", str(tmp / "go-session.json"),
        )  # fmt: skip
        procs.append(go_agent)
        go_agent.event("connected")
        yield origin_addr, go_url, go_cloud, go_agent
    finally:
        for proc in procs:
            proc.stop()


@contextlib.contextmanager
def python_agent(
    base: str, user_token: str, origin_addr: str, tmp: Path, serial: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``visiona agent`` paired to ``base`` and forwarding to ``origin_addr``, online;
    yields (process, device id); terminated after."""
    agent = subprocess.Popen(
        [
            sys.executable, "-m", "visiona", "agent", "--server", base,
            "--token", _pairing_token(base, user_token), "--forward", origin_addr,
            "--session-file", str(tmp / "py-session.json"), "--serial", serial,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield agent, _wait_online(base, user_token)
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def _row(label: str, runs: dict[str, list[float]], unit: str, *, higher_better: bool) -> str:
    """One figure: python's median and range, then each reference with python's ratio to it.

    A ratio above 1 means python does better (more MB/s, or fewer ms).
    """
    med = {name: statistics.median(values) for name, values in runs.items()}
    ours = runs["python"]
    parts = [f"{label:<30} python {med['python']:9.2f} {unit} [{min(ours):.2f}-{max(ours):.2f}]"]
    for name, value in med.items():
        if name == "python":
            continue
        ratio = (med["python"] / value) if higher_better else (value / med["python"])
        parts.append(f"{name} {value:9.2f} (x{ratio:.2f})")
    return "  |  ".join(parts)


def main() -> None:
    """Run every tunnel scenario and print the figures with their ratios."""
    binary = build_tunnel_peer()
    with tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp_name:
        tmp = Path(tmp_name)
        with (
            go_pair(binary, tmp) as (origin_addr, go_url, _, _),
            _visiona_serve(tmp / "data") as (base, server),
        ):
            user_token = _user(base)
            with python_agent(base, user_token, origin_addr, tmp, "BENCH") as (_, device_id):
                paths = {
                    "python": (f"{base}{API}/devices/{device_id}/proxy", f"Bearer {user_token}"),
                    "go pair": (f"{go_url}/proxy", ""),
                    "direct": (f"http://{origin_addr}", ""),
                }
                _report(binary, paths)
            for line in _idle_scenario(base, server.pid, user_token):
                print(line, flush=True)


def _report(binary: Path, paths: dict[str, tuple[str, str]]) -> None:
    """Every scenario, ``ROUNDS`` times, the paths interleaved within each round.

    Order per round: python, go pair, direct, then the next scenario, so a drift of the
    (shared) machine hits all three alike; each figure is the median of its rounds.
    """
    for url, auth in paths.values():  # warm up every path
        _load(binary, f"{url}/bytes/{64 * 1024 * 1024}", n=2, auth=auth)
        _load(binary, f"{url}/tiny", n=50, new_conn=True, auth=auth)
    each = BIG // 4
    big: dict[str, list[float]] = {name: [] for name in paths}
    p50: dict[str, list[float]] = {name: [] for name in paths}
    p99: dict[str, list[float]] = {name: [] for name in paths}
    par: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, (url, auth) in paths.items():
            big[name].append(_load(binary, f"{url}/bytes/{BIG}", n=1, auth=auth)["mbps"])
        for name, (url, auth) in paths.items():
            tiny = _load(binary, f"{url}/tiny", n=TINY, new_conn=True, auth=auth)
            p50[name].append(tiny["p50_ms"])
            p99[name].append(tiny["p99_ms"])
        for name, (url, auth) in paths.items():
            result = _load(binary, f"{url}/bytes/{each}", n=PARALLEL, c=PARALLEL, auth=auth)
            par[name].append(result["mbps"])
    print(
        f"medians of {ROUNDS} interleaved rounds [python's range]; (xR) = python's ratio to "
        "that path, > 1 is better; the machine is shared, so only same-run ratios mean much",
        flush=True,
    )
    print(_row(f"{BIG / GIB:g} GiB download (MB/s)", big, "MB/s", higher_better=True))
    print(_row(f"{TINY} tiny sequential p50 (ms)", p50, "ms", higher_better=False))
    print(_row(f"{TINY} tiny sequential p99 (ms)", p99, "ms", higher_better=False))
    print(
        _row(f"{PARALLEL} parallel x {each / GIB:g} GiB (MB/s)", par, "MB/s", higher_better=True),
        flush=True,
    )
