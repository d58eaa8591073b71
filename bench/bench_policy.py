"""The agent's policy on the request path: the same tunnel with and without allow rules.

One ``visiona serve``, one Go origin (``tunnelpeer -mode origin``), two real
``visiona agent`` processes forwarding to it: **open** (no rules: the fast path, as
before the policy existed) and **policy** (``--allow 'GET /*'`` plus ``--busy-header``:
the request line is parsed, normalised, matched and rewritten, the answer's head is
scanned). The Go load client drives both: sequential tiny requests with a new client
connection each (p50/p99), and one 256 MiB download (MB/s). Rounds are interleaved
(open, policy, open, policy, ...); each figure is the median of ``ROUNDS`` rounds
with its range, and the ratio policy/open is the number to read.

Reproduce: ``.venv/bin/python -m bench policy`` (env ``POLICY_BENCH_ROUNDS``,
``POLICY_BENCH_TINY``).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.bench_tunnel import API, Proc, _load, _pairing_token, _user, _visiona_serve
from testkit.gopeer import build_tunnel_peer

ROUNDS = int(os.environ.get("POLICY_BENCH_ROUNDS", "5"))
TINY = int(os.environ.get("POLICY_BENCH_TINY", "1000"))
BIG = 256 * 1024 * 1024


def _agent(base: str, user_token: str, origin: str, tmp: Path, name: str, *extra: str) -> Proc:
    args = [
        sys.executable, "-m", "visiona", "agent", "--server", base,
        "--token", _pairing_token(base, user_token), "--forward", origin,
        "--session-file", str(tmp / f"{name}.json"), "--serial", f"BENCH-{name}",
        "--name", name, *extra,
    ]  # fmt: skip
    return Proc(*args)


def _online(base: str, user_token: str, names: set[str]) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {user_token}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        items = httpx.get(f"{base}{API}/devices", headers=headers).json()["items"]
        online = {d["name"]: str(d["id"]) for d in items if d["remote_status"] == "online"}
        if names <= set(online):
            return online
        time.sleep(0.2)
    raise RuntimeError("the agents did not come online")


def _figure(label: str, runs: dict[str, list[float]], unit: str, *, higher_better: bool) -> str:
    med = {name: statistics.median(values) for name, values in runs.items()}
    parts = [
        f"{name} {med[name]:8.2f} {unit} [{min(v):.2f}-{max(v):.2f}]" for name, v in runs.items()
    ]
    ratio = med["policy"] / med["open"]
    cost = (1 - ratio) if higher_better else (ratio - 1)
    return f"{label:<28} " + "  |  ".join(parts) + f"  |  policy/open x{ratio:.3f} ({cost:+.1%})"


def main() -> None:
    """Measure both agents, interleaved, and print medians, ranges and the ratio."""
    binary = build_tunnel_peer()
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp_name:
        tmp = Path(tmp_name)
        origin = Proc(str(binary), "-mode", "origin")
        agents: list[Proc] = []
        try:
            origin_addr = f"127.0.0.1:{origin.event('listening')['port']}"
            with _visiona_serve(tmp / "data") as (base, _server):
                user_token = _user(base)
                agents.append(_agent(base, user_token, origin_addr, tmp, "open"))
                policy = ("--allow", "GET /*", "--busy-header")
                agents.append(_agent(base, user_token, origin_addr, tmp, "policy", *policy))
                ids = _online(base, user_token, {"open", "policy"})
                auth = f"Bearer {user_token}"
                urls = {
                    name: f"{base}{API}/devices/{ids[name]}/proxy" for name in ("open", "policy")
                }
                for url in urls.values():  # warm up
                    _load(binary, f"{url}/tiny", n=100, new_conn=True, auth=auth)
                    _load(binary, f"{url}/bytes/{16 * 1024 * 1024}", n=1, auth=auth)
                p50: dict[str, list[float]] = {name: [] for name in urls}
                p99: dict[str, list[float]] = {name: [] for name in urls}
                big: dict[str, list[float]] = {name: [] for name in urls}
                for _ in range(ROUNDS):
                    for name, url in urls.items():
                        tiny = _load(binary, f"{url}/tiny", n=TINY, new_conn=True, auth=auth)
                        p50[name].append(tiny["p50_ms"])
                        p99[name].append(tiny["p99_ms"])
                    for name, url in urls.items():
                        big[name].append(
                            _load(binary, f"{url}/bytes/{BIG}", n=1, auth=auth)["mbps"]
                        )
                print(
                    f"medians of {ROUNDS} interleaved rounds [range]; the machine is shared, "
                    "read the same-run ratio",
                    flush=True,
                )
                print(_figure(f"{TINY} tiny sequential p50", p50, "ms", higher_better=False))
                print(_figure(f"{TINY} tiny sequential p99", p99, "ms", higher_better=False))
                print(_figure("256 MiB download", big, "MB/s", higher_better=True), flush=True)
        finally:
            for proc in [*agents, origin]:
                proc.stop()
