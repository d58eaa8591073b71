"""Two nodes behind nginx hold 2N tunnels; one is killed and its N come back (issue 27).

Set-up: a throwaway PostgreSQL and Redis, nodes A and B (`visiona serve`, clustered:
``VISIONA_INTERNAL_TOKEN`` + Redis, production tunnel settings), nginx in front
configured with docs/nginx.conf (``worker_connections`` sized for the run: a tunnel
through nginx takes two connections). 2N devices are paired (spread over both nodes),
then one Go process (``tunnelpeer -mode fleet``) runs 2N real agents through nginx:
WebSocket + hashicorp/yamux, answering pings, reconnecting as ``visiona agent`` does
(``Retry-After`` with jitter, the 1001 reconnect hint, jittered backoff 0.5-30 s).

Printed: time to pair 2N; the connect storm to all 2N online (as the fleet sees it,
as the registry holds it, as the API lists it); how the tunnels split between the nodes;
then the node holding more is SIGKILLed and the time until every one of its tunnels is
up again on the survivor (fleet: every agent up again after as many new connects; the
registry: every lease on the survivor; the API: all 2N listed ``online``, the killed
node's devices with a ``last_connected_at`` after the kill); the fleet's stop (SIGTERM:
every tunnel closed 1000) and whether the survivor released every lease; the upgrade
answers by status (the fleet's, and each node's ``visiona_tunnel_upgrades_total``);
what each node
logged (warnings, errors, tracebacks; by phase of the run: start and pairing, storm,
failover, the fleet's stop, the nodes' stop; the most frequent lines) and nginx's log.

``BENCH_SCALE2_N`` sets N per node (default 200, CI-friendly; the issue's figure is
10,000 per node on a quiet machine); ``BENCH_SCALE_LOG`` a directory that keeps the
nodes' logs (else they are summarised and removed). The process raises its open-file
limit to what the run needs (the fleet, nginx and the nodes inherit it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.bench_scale import pair_devices, server_env, sign_in
from testkit.gopeer import FleetGroup, build_tunnel_peer
from testkit.nginx import NginxServer
from testkit.nodes import Node, spawn_node
from testkit.servers import PostgresServer, RedisServer, free_port
from visiona.cluster.registry import KEY_PREFIX
from visiona.kit.fdlimit import raise_nofile_limit
from visiona.wire import API_PREFIX

API = API_PREFIX
N = int(os.environ.get("BENCH_SCALE2_N", "200"))
TOKEN = "bench-scale2-internal-token-0123456789"
#: bounds every wait (a hung run fails instead of hanging); no assertion on speed
LIMIT = 900.0
#: how long the leases may take to be released once the fleet closed every tunnel
RELEASE_WAIT = 20.0


def _raise_nofile(needed: int) -> str:
    """Raise this process's open-file limit to ``needed`` (hard too, when allowed: root),
    else the soft limit to the hard one; the figure, for the output."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
    raise_nofile_limit()
    after = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    short = " (short of what the run needs)" if after < needed else ""
    return f"open files: {after} (was {soft}; the run needs about {needed}){short}"


def _per_process_files() -> int:
    """The open files one child process may use for connections: the hard limit (which
    an unprivileged process cannot raise) less a margin."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return (1 << 20 if hard == resource.RLIM_INFINITY else int(hard)) - 1024


async def _owners(redis: Redis, device_ids: list[str]) -> collections.Counter[str]:
    """How many of ``device_ids`` each node holds in the registry (``-`` none)."""
    counts: collections.Counter[str] = collections.Counter()
    for start in range(0, len(device_ids), 1000):
        chunk = device_ids[start : start + 1000]
        for raw in await redis.mget([f"{KEY_PREFIX}{d}" for d in chunk]):
            text = raw.decode() if isinstance(raw, bytes) else raw
            found = re.search(r'"node": "([^"]+)"', text) if text else None
            counts[found.group(1) if found else "-"] += 1
    return counts


async def _listed(
    http: httpx.AsyncClient, headers: dict[str, str], since: datetime | None
) -> tuple[int, int]:
    """(devices the API lists online, those of them connected after ``since``)."""
    online = fresh = 0
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 200, "remote_status": "online"}
        if cursor:
            params["cursor"] = cursor
        answer = await http.get(f"{API}/devices", params=params, headers=headers)
        answer.raise_for_status()
        body = answer.json()
        for item in body["items"]:
            online += 1
            stamp = item.get("last_connected_at")
            if since and stamp and datetime.fromisoformat(stamp) > since:
                fresh += 1
        cursor = body.get("next_cursor")
        if not cursor:
            return online, fresh


async def _until(check: Any, *, step: float) -> float:
    """Seconds until ``await check()`` is true (bounded by :data:`LIMIT`)."""
    started = time.perf_counter()
    while not await check():
        if time.perf_counter() - started > LIMIT:
            raise RuntimeError("the two-node scale bench waited too long")
        await asyncio.sleep(step)
    return time.perf_counter() - started


def _healthy(spawned: tuple[str, subprocess.Popen[bytes], Path], port: int) -> Node:
    """The spawned node once ``/healthz`` answers 200 on ``port`` (bounded)."""
    name, proc, log = spawned
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node {name} exited:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return Node(name, proc, port, log)
        time.sleep(0.1)
    raise RuntimeError(f"node {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")


def _upgrades(node: Node) -> str:
    """The node's ``visiona_tunnel_upgrades_total`` by answer."""
    try:
        text = httpx.get(f"{node.url}/metrics", timeout=30).text
    except httpx.HTTPError as err:
        return f"metrics unavailable ({type(err).__name__})"
    found = re.findall(r'visiona_tunnel_upgrades_total\{answer="([^"]+)"\} ([0-9.e+]+)', text)
    return ", ".join(f"{a}: {int(float(v))}" for a, v in found) or "none"


_STAMP = re.compile(r"^\S+ \S+ ")  # the text format's "date time " before the level


def _phase_of(line: str, phases: list[tuple[str, datetime]]) -> str:
    """The phase of the run a log line was written in (by its local-time stamp)."""
    try:
        stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")  # noqa: DTZ007 - local, as logged
    except ValueError:
        return "?"
    return next((name for name, since in reversed(phases) if stamp >= since), "start-up")


def _log_summary(node: Node, phases: list[tuple[str, datetime]]) -> list[str]:
    """Warnings, errors and tracebacks the node logged (all, and those by phase of the
    run), and its most frequent such lines."""
    text = node.log.read_text(errors="replace")
    kept = os.environ.get("BENCH_SCALE_LOG")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        shutil.copy(node.log, Path(kept) / f"bench-scale2-{node.name}.log")
    node.log.unlink(missing_ok=True)
    lines = text.splitlines()
    counts = {
        level: sum(f" {level} " in line for line in lines)
        for level in ("WARNING", "ERROR", "CRITICAL")
    }
    counts["tracebacks"] = text.count("Traceback (most recent call last)")
    noted = [
        line
        for line in lines
        if any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL"))
    ]
    frequent = collections.Counter(
        re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?", "#", _STAMP.sub("", line))[:140]
        for line in noted
    )
    when = dict(collections.Counter(_phase_of(line, phases) for line in noted))
    out = [f"node {node.name} log: {counts}{f'; by phase: {when}' if when else ''}"]
    out += [f"    {n} x {line}" for line, n in frequent.most_common(5)]
    return out


async def _run(env: dict[str, str], binary: Path, tmp: Path) -> list[str]:
    total = 2 * N
    lines: list[str] = []
    #: when each phase began (local time, as the nodes' log lines are stamped); the lines
    #: before the first are the pairing's (and the start's)
    phases: list[tuple[str, datetime]] = [("start and pairing", datetime.now())]  # noqa: DTZ005
    # A fixed free port each: at WARNING the node does not log the port it bound.
    ports = {name: free_port() for name in "ab"}
    spawned = [
        spawn_node(name, {**env, "VISIONA_NODE_ID": f"node-{name}"}, port=ports[name])
        for name in "ab"
    ]
    nodes: list[Node] = []
    lb: NginxServer | None = None
    fleet: FleetGroup | None = None
    redis = Redis.from_url(env["VISIONA_REDIS_URL"])
    try:
        nodes.extend(_healthy(s, ports[s[0]]) for s in spawned)
        a, b = nodes
        # a process's open files are bounded by the hard limit: nginx (two per tunnel)
        # gets as many workers as that takes, plus one for an uneven spread
        budget = _per_process_files()
        workers = math.ceil(2 * total / budget) + 1 if 2 * total + 1024 > budget else 1
        lb = NginxServer(
            [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
            workers=workers,
            connections=min(budget, 2 * total // workers * 3 // 2 + 1024),
        )
        lb.start()
        # idle connections dropped before the nodes' 5 s keep-alive drops them
        limits = httpx.Limits(keepalive_expiry=2.0)
        async with (
            httpx.AsyncClient(base_url=a.url, timeout=120, limits=limits) as via_a,
            httpx.AsyncClient(base_url=b.url, timeout=120, limits=limits) as via_b,
            httpx.AsyncClient(base_url=lb.url, timeout=120, limits=limits) as via_lb,
        ):
            headers = await sign_in(via_a, "scale2@example.com")
            started = time.perf_counter()
            devices = await pair_devices([via_a, via_b], headers, total)
            lines.append(f"pair {total} (over both nodes): {time.perf_counter() - started:.2f} s")
            ids = [device for device, _ in devices]
            tokens = tmp / "tokens.txt"
            tokens.write_text("".join(f"{token}\n" for _, token in devices))

            phases.append(("storm", datetime.now()))  # noqa: DTZ005 - local, as the log
            started = time.perf_counter()
            fleet = await FleetGroup.start(binary, lb.url, tokens, per_process=budget)
            up = await fleet.until(lambda p: p["up"] == total, limit=LIMIT)
            await _until(lambda: _equals(_owners(redis, ids), total, exclude="-"), step=0.25)
            leased = time.perf_counter() - started
            await _until(lambda: _first_is(_listed(via_lb, headers, None), total), step=0.5)
            listed = time.perf_counter() - started
            lines.append(
                f"storm of {total} through nginx: all up {up:.2f} s (fleet), all leased "
                f"{leased:.2f} s (registry), all online {listed:.2f} s (API)"
            )
            split = await _owners(redis, ids)
            unowned = f", none {split['-']}" if split["-"] else ""
            lines.append(f"split: node-a {split['node-a']}, node-b {split['node-b']}{unowned}")
            lines.append(f"fleet before the kill: {_fleet_line(fleet.progress)}")
            lines.extend(f"upgrade answers (node {n.name}): {_upgrades(n)}" for n in nodes)

            victim, survivor = (a, b) if split["node-a"] >= split["node-b"] else (b, a)
            moved = split[f"node-{victim.name}"]
            connects = fleet.progress["connects"]
            await asyncio.sleep(1)  # the status batch has written every tunnel up
            killed_at = datetime.now(UTC)
            phases.append(("failover", datetime.now()))  # noqa: DTZ005 - local, as the log
            started = time.perf_counter()
            victim.kill()
            back = await fleet.until(
                lambda p: p["up"] == total and p["connects"] - connects >= moved, limit=LIMIT
            )
            await _until(
                lambda: _equals(_owners(redis, ids), total, only=f"node-{survivor.name}"),
                step=0.25,
            )
            owned = time.perf_counter() - started
            await _until(lambda: _both(_listed(via_lb, headers, killed_at), total, moved), step=0.5)
            api = time.perf_counter() - started
            lines.append(
                f"SIGKILL node {victim.name} holding {moved}: all {total} up again "
                f"{back:.2f} s after (fleet, {fleet.progress['connects'] - connects} "
                f"reconnects), all leased by node {survivor.name} {owned:.2f} s (registry), "
                f"all online and the {moved} reconnected since the kill {api:.2f} s (API)"
            )
            lines.append(f"fleet after the failover: {_fleet_line(fleet.progress)}")
            lines.append(f"upgrade answers (node {survivor.name}): {_upgrades(survivor)}")
            phases.append(("fleet stop", datetime.now()))  # noqa: DTZ005 - local, as the log
            stopping = time.perf_counter()
            code = await fleet.stop()
            fleet = None
            stopped = time.perf_counter() - stopping
            lines.append(
                f"fleet stop (SIGTERM, every tunnel closed 1000): exit {code} after "
                f"{stopped:.2f} s; {await _released(redis, ids)}"
            )
    finally:
        if fleet is not None:
            await fleet.stop()
        await redis.aclose()
        if lb is not None:
            lines.append(_nginx_summary(lb.error_log()))
            lb.cleanup()
        phases.append(("nodes' stop", datetime.now()))  # noqa: DTZ005 - local, as the log
        for node in nodes:
            node.stop()
        for _, proc, _ in spawned:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for node in nodes:
        lines += _log_summary(node, phases)
    return lines


def _nginx_summary(text: str) -> str:
    """nginx's log lines by level, and its most frequent error (a dead upstream's refusals)."""
    levels = collections.Counter(re.findall(r"\[(warn|error|crit|alert|emerg)\]", text))
    frequent = collections.Counter(
        re.sub(r"^.*?\[(?:error|crit|alert|emerg)\] \d+#\d+: (?:\*\d+ )?", "", line).split(
            ", client:"
        )[0]
        for line in text.splitlines()
        if re.search(r"\[(error|crit|alert|emerg)\]", line)
    ).most_common(1)
    top = f"; most frequent: {frequent[0][1]} x {frequent[0][0]}" if frequent else ""
    return f"nginx log: {dict(levels)}{top}"


async def _released(redis: Redis, ids: list[str], limit: float = RELEASE_WAIT) -> str:
    """How the survivor's leases went once every tunnel closed: all released (when), or
    how many were still held after ``limit`` s (a release that failed waits for the TTL)."""
    started = time.perf_counter()
    while (held := len(ids) - (await _owners(redis, ids))["-"]) > 0:
        if time.perf_counter() - started > limit:
            return f"{held} of {len(ids)} leases still held {limit:.0f} s after the stop"
        await asyncio.sleep(0.25)
    return f"all {len(ids)} leases released {time.perf_counter() - started:.2f} s after the stop"


def _fleet_line(progress: dict[str, Any]) -> str:
    shown = {k: progress.get(k) for k in ("up", "connects", "refused", "failed", "closed")}
    return f"{shown}, refused by status {progress.get('statuses', {})}"


async def _equals(
    counts: Any, total: int, *, exclude: str | None = None, only: str | None = None
) -> bool:
    found: collections.Counter[str] = await counts
    if only is not None:
        return found[only] == total
    return sum(n for node, n in found.items() if node != exclude) == total


async def _first_is(pair: Any, total: int) -> bool:
    online, _ = await pair
    return bool(online == total)


async def _both(pair: Any, total: int, fresh: int) -> bool:
    online, new = await pair
    return bool(online == total and new >= fresh)


def main() -> None:
    """Run the scenario; print the figures."""
    limit = _raise_nofile(8 * N + 4096)  # the fleet 2N, nginx 4N, each node N (+ margin)
    binary = build_tunnel_peer()
    pg, redis = PostgresServer(), RedisServer()
    pg.start()
    redis.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale2-") as tmp:
            env = server_env(pg, redis, "bench_scale2", Path(tmp))
            env["VISIONA_INTERNAL_TOKEN"] = TOKEN
            env["VISIONA_FORWARDED_ALLOW_IPS"] = "127.0.0.1"
            lines = asyncio.run(_run(env, binary, Path(tmp)))
    finally:
        redis.cleanup()
        pg.cleanup()
    print(f"N = {N} tunnels per node, {2 * N} in all (BENCH_SCALE2_N); {limit}")
    for line in lines:
        print(f"  {line}")
