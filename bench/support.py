"""Shared helpers for benchmarks: start a real `visiona serve`, drive HTTP load, percentiles."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from testkit.servers import free_port


@dataclass
class LoadResult:
    """Throughput and latency of one load run."""

    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        """Latency percentile ``q`` (0 to 100) in milliseconds."""
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))
        return ordered[index] * 1000

    def line(self, label: str) -> str:
        """One printable line."""
        return (
            f"{label:<44} {self.rps:>9.0f} req/s  p50 {self.pct(50):6.2f} ms  "
            f"p99 {self.pct(99):6.2f} ms  (n={self.requests})"
        )


@dataclass
class WrkResult:
    """What wrk reports: requests per second and latency percentiles in ms."""

    rps: float
    p50: float
    p99: float

    def line(self, label: str) -> str:
        """One printable line."""
        return (
            f"{label:<44} {self.rps:>9.0f} req/s  p50 {self.p50:6.2f} ms  "
            f"p99 {self.p99:6.2f} ms  (wrk, 5 s)"
        )


@contextmanager
def visiona_server(env: dict[str, str]) -> Iterator[str]:
    """Run `visiona serve --migrate` on a free port with ``env``; yield its base URL."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONA_")}
    full_env.update({"VISIONA_LOG_LEVEL": "WARNING", **env})
    proc = subprocess.Popen(
        [sys.executable, "-m", "visiona", "serve", "--port", str(port), "--migrate"],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("visiona serve did not become healthy")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def drive(
    concurrency: int,
    total: int,
    make_request: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
    base: str,
) -> LoadResult:
    """Send ``total`` requests from ``concurrency`` workers over keep-alive connections."""
    latencies: list[float] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            for i in counter:
                started = time.perf_counter()
                response = await make_request(client, i)
                latencies.append(time.perf_counter() - started)
                if response.status_code >= 400:
                    raise RuntimeError(f"unexpected {response.status_code}: {response.text}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(requests=len(latencies), seconds=elapsed, latencies=latencies)


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)
