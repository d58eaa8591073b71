"""System calls per tiny proxied request, for the server and the agent, next to the Go pair.

Counts do not depend on how loaded the machine is, unlike times: ``strace -f -c`` is
attached to each process while ``N`` sequential ``GET /tiny`` requests (one
keep-alive client) go through the tunnel, and each call's count is divided by ``N``.
Paths as in ``bench_tunnel``: **python** = ``visiona serve`` + ``visiona agent``,
**go pair** = ``tunnelpeer -mode cloud`` + ``-mode agent`` (hashicorp/yamux +
gorilla/websocket), both forwarding to the same Go origin. Reads and writes on every
socket are counted (client, tunnel and local service), so a request costs at least
2 reads and 2 writes on each side. Go's runtime makes futex and epoll calls of its own:
compare the I/O rows.

Reproduce: ``.venv/bin/python -m bench syscalls`` (env ``SYSCALLS_BENCH_N``, default
2000). Needs strace (``make bench`` installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.bench_tunnel import API, _user, _visiona_serve, go_pair, python_agent
from testkit.gopeer import build_tunnel_peer

N = int(os.environ.get("SYSCALLS_BENCH_N", "2000"))
_IO = ("read", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg")
_OTHER = ("epoll_wait", "epoll_pwait", "futex")
_ROW = re.compile(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$")


@contextmanager
def _traced(pids: dict[str, int], out: Path) -> Iterator[dict[str, Path]]:
    """``strace -f -c`` on each pid while the block runs; yields the report paths."""
    reports = {name: out / f"{name}.strace" for name in pids}
    tracers = [
        subprocess.Popen(
            ["strace", "-f", "-c", "-p", str(pid), "-o", str(reports[name])],
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    time.sleep(1.0)  # strace attaches to every thread
    try:
        yield reports
    finally:
        for tracer in tracers:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)


def _counts(report: Path) -> dict[str, float]:
    """Calls per request by syscall name, from one ``strace -c`` report."""
    counts: dict[str, float] = {}
    for line in report.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            counts[match.group(2)] = int(match.group(1)) / N
    return counts


def _drive(url: str, headers: dict[str, str]) -> None:
    with httpx.Client(timeout=30) as client:
        for _ in range(N):
            response = client.get(url, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code}")


def _measure(
    url: str, headers: dict[str, str], pids: dict[str, int], tmp: Path
) -> dict[str, dict[str, float]]:
    with httpx.Client(timeout=30) as client:  # warm-up, untraced
        for _ in range(50):
            client.get(url, headers=headers).raise_for_status()
    with _traced(pids, tmp) as reports:
        _drive(url, headers)
    return {name: _counts(path) for name, path in reports.items()}


def main() -> None:
    """Count the calls on both paths and print them per request."""
    if shutil.which("strace") is None:
        raise RuntimeError("strace is not installed (make bench installs it)")
    binary = build_tunnel_peer()
    with tempfile.TemporaryDirectory(prefix="bench-syscalls-") as tmp_name:
        tmp = Path(tmp_name)
        with go_pair(binary, tmp) as (origin_addr, go_url, go_cloud, go_agent):
            go = _measure(
                f"{go_url}/proxy/tiny",
                {},
                {"go-cloud": go_cloud.proc.pid, "go-agent": go_agent.proc.pid},
                tmp,
            )
            with _visiona_serve(tmp / "data") as (base, server):
                user_token = _user(base)
                with python_agent(base, user_token, origin_addr, tmp, "SYSCALLS") as (
                    agent,
                    device_id,
                ):
                    py = _measure(
                        f"{base}{API}/devices/{device_id}/proxy/tiny",
                        {"Authorization": f"Bearer {user_token}"},
                        {"server": server.pid, "agent": agent.pid},
                        tmp,
                    )
    _report(py, go)


def _report(py: dict[str, dict[str, float]], go: dict[str, dict[str, float]]) -> None:
    print(f"{N} sequential tiny proxied requests; calls per request (strace -f -c)")
    columns = [("server", py["server"]), ("go-cloud", go["go-cloud"]),
               ("agent", py["agent"]), ("go-agent", go["go-agent"])]  # fmt: skip
    print(f"{'syscall':12}" + "".join(f"{name:>10}" for name, _ in columns))
    for call in (*_IO, *_OTHER):
        if any(counts.get(call) for _, counts in columns):
            print(f"{call:12}" + "".join(f"{counts.get(call, 0.0):10.2f}" for _, counts in columns))
    totals = [sum(counts.get(k, 0.0) for k in _IO) for _, counts in columns]
    print(f"{'I/O total':12}" + "".join(f"{t:10.2f}" for t in totals))
