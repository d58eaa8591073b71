"""Throughput of visiona.yamux next to hashicorp/yamux (Go) measured in the same run.

Every scenario runs in one process, client and server both in it, over loopback
TCP or a WebSocket on it (the ``websockets`` package in Python, gorilla/websocket in
Go): the Python session on uvloop (one thread), the Go library in the peer binary of
the interop tests (``-mode bench``; goroutines on every core). Raw TCP in each
language is the ceiling. Figures are medians of ``ROUNDS`` rounds, MB = 10^6 bytes;
the machine is shared, so only ratios measured in the same run mean much.

Reproduce: ``.venv/bin/python -m bench yamux`` (env ``YAMUX_BENCH_MIB`` sets the
bytes per scenario, ``YAMUX_BENCH_ROUNDS`` the rounds, ``YAMUX_BENCH_MALLOC=0`` keeps
glibc's default malloc thresholds).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import uvloop

from testkit.gopeer import build_peer
from testkit.pyservice import ws_client_session, ws_server
from visiona.yamux import Config, Session, Stream, open_tcp_session, serve_tcp

MIB = 1024 * 1024
TOTAL = int(os.environ.get("YAMUX_BENCH_MIB", "256")) * MIB
ROUNDS = int(os.environ.get("YAMUX_BENCH_ROUNDS", "3"))
TINY_SIZE = 16
TINY_COUNT = 200_000
WRITE_SIZE = 256 * 1024
RAW_WRITE_SIZE = MIB  # raw TCP writes as large as the session's batched writes
WINDOWS = {"256k": 256 * 1024, "16m": 16 * MIB}


def tune_malloc() -> bool:
    """Keep glibc from mmapping/unmapping every 128 KiB+ buffer (see PERF-NOTES).

    An application choice, not the library's: set ``YAMUX_BENCH_MALLOC=0`` to skip it.
    """
    if os.environ.get("YAMUX_BENCH_MALLOC", "1") == "0":
        return False
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name)
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 8 * MIB) and libc.mallopt(m_trim_threshold, 64 * MIB)
    return bool(ok)


# -- Python scenarios --------------------------------------------------------------------


class _Sink(asyncio.Protocol):
    def __init__(self, total: int, done: asyncio.Future[None]) -> None:
        self.left = total
        self.done = done

    def data_received(self, data: bytes) -> None:
        """Count the bytes; resolve ``done`` once all arrived."""
        self.left -= len(data)
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)


class _Source(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to write on."""
        self.transport = cast("asyncio.Transport", transport)  # a stream socket's transport

    def pause_writing(self) -> None:
        """The socket buffer is full: the writer waits on ``writable``."""
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        """The socket buffer drained: release the writer."""
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)


async def py_raw_tcp(total: int) -> float:
    """Raw TCP with asyncio protocols: the Python ceiling."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    server = await loop.create_server(lambda: _Sink(total, done), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, source = await loop.create_connection(_Source, "127.0.0.1", port)
    if source.transport is None:
        raise RuntimeError("no transport")
    chunk = os.urandom(RAW_WRITE_SIZE)
    started = time.perf_counter()
    for _ in range(total // RAW_WRITE_SIZE):
        source.transport.write(chunk)
        if source.writable is not None:
            await source.writable
            source.writable = None
    await done
    elapsed = time.perf_counter() - started
    source.transport.close()
    server.close()
    return total / elapsed / 1e6


async def _yamux_run(
    streams: int,
    config: Config,
    send: Callable[[Stream], Awaitable[None]],
    expect: int,
) -> tuple[float, int]:
    """Open ``streams`` streams, run ``send`` on each, time until the peer read ``expect``.

    Returns the seconds taken and the number of frames the sending session sent.
    """
    accepted: asyncio.Queue[Session] = asyncio.Queue()
    server = await serve_tcp(accepted.put_nowait, "127.0.0.1", 0, config=config)
    port = server.sockets[0].getsockname()[1]
    client = await open_tcp_session("127.0.0.1", port, config=config)
    server_session = await accepted.get()

    async def drain_one() -> int:
        stream = await server_session.accept_stream()
        count = 0
        while block := await stream.read(1 << 20):
            count += len(block)
        return count

    async def send_one() -> None:
        stream = await client.open_stream()
        await send(stream)
        stream.write_eof()

    started = time.perf_counter()
    readers = [asyncio.ensure_future(drain_one()) for _ in range(streams)]
    await asyncio.gather(*(send_one() for _ in range(streams)))
    received = sum(await asyncio.gather(*readers))
    elapsed = time.perf_counter() - started
    if received != expect:
        raise RuntimeError(f"received {received} bytes, expected {expect}")
    frames = client.stats().frames_sent
    await client.close()
    await server_session.wait_closed()
    server.close()
    return elapsed, frames


async def py_yamux(total: int, streams: int, window: int) -> float:
    """Bulk transfer on ``streams`` streams; MB/s."""
    config = Config(max_stream_window=window, enable_keepalive=False)
    chunk = os.urandom(WRITE_SIZE)
    per = total // streams // WRITE_SIZE

    async def send(stream: Stream) -> None:
        for _ in range(per):
            stream.write(chunk)
            await stream.drain()

    elapsed, _ = await _yamux_run(streams, config, send, per * WRITE_SIZE * streams)
    return per * WRITE_SIZE * streams / elapsed / 1e6


async def py_yamux_ws(total: int, window: int) -> float:
    """One stream over a loopback WebSocket (``websockets`` on both ends); MB/s."""
    config = Config(max_stream_window=window, enable_keepalive=False)
    chunk = os.urandom(WRITE_SIZE)
    count = total // WRITE_SIZE
    async with ws_server(client=False, config=config) as (port, sessions):
        url = f"ws://127.0.0.1:{port}/"
        async with ws_client_session(url, client=True, config=config) as client:
            server_session = await sessions.get()

            async def drain_one() -> int:
                stream = await server_session.accept_stream()
                received = 0
                while block := await stream.read(1 << 20):
                    received += len(block)
                return received

            started = time.perf_counter()
            reader = asyncio.ensure_future(drain_one())
            stream = await client.open_stream()
            for _ in range(count):
                stream.write(chunk)
                await stream.drain()
            stream.write_eof()
            received = await reader
            elapsed = time.perf_counter() - started
    if received != count * WRITE_SIZE:
        raise RuntimeError(f"received {received} bytes, expected {count * WRITE_SIZE}")
    return received / elapsed / 1e6


async def py_tiny(count: int) -> tuple[float, float]:
    """``count`` writes of 16 bytes on one stream; writes and frames per second.

    A write is one frame unless it had to wait for credit: writes queued meanwhile
    leave together as one frame. The Go peer counts both too (its data frames parsed
    off the wire on the receiving side): hashicorp/yamux sends one frame per write.
    """
    config = Config(enable_keepalive=False)
    payload = os.urandom(TINY_SIZE)

    async def send(stream: Stream) -> None:
        for i in range(count):
            stream.write(payload)
            if i % 256 == 255:
                await stream.drain()

    elapsed, frames = await _yamux_run(1, config, send, count * TINY_SIZE)
    return count / elapsed, frames / elapsed


async def python_round() -> dict[str, float]:
    """One round of every Python scenario."""
    out = {"raw_tcp": await py_raw_tcp(TOTAL)}
    for label, window in WINDOWS.items():
        for streams in (1, 8):
            out[f"yamux_{streams}_{label}"] = await py_yamux(TOTAL, streams, window)
        out[f"ws_{label}"] = await py_yamux_ws(TOTAL, window)
    out["tiny"], out["tiny_frames"] = await py_tiny(TINY_COUNT)
    return out


# -- Go scenarios --------------------------------------------------------------------------


def go_round(binary: str) -> dict[str, float]:
    """One round of every Go scenario (the peer binary, in-process, loopback TCP)."""
    out: dict[str, float] = {}
    for label, window in WINDOWS.items():
        proc = subprocess.run(
            [binary, "-mode", "bench", "-bytes", str(TOTAL), "-window", str(window)],
            capture_output=True,
            text=True,
            check=True,
        )
        for line in proc.stdout.splitlines():
            event: dict[str, Any] = json.loads(line)
            if event["name"] == "raw_tcp":
                out.setdefault("raw_tcp", event["mbps"])
            elif event["name"] == "yamux":
                out[f"yamux_{event['streams']}_{label}"] = event["mbps"]
            elif event["name"] == "yamux_ws":
                out[f"ws_{label}"] = event["mbps"]
            elif event["name"] == "tiny" and label == "256k":
                out["tiny"] = event["writes_per_s"]
                out["tiny_frames"] = event["frames_per_s"]
    return out


# -- report ----------------------------------------------------------------------------------

ROWS = [
    ("raw_tcp", "raw TCP, 1 MiB writes (ceiling)", "MB/s"),
    ("yamux_1_256k", "yamux, 1 stream, 256 KiB window", "MB/s"),
    ("yamux_8_256k", "yamux, 8 streams, 256 KiB window", "MB/s"),
    ("yamux_1_16m", "yamux, 1 stream, 16 MiB window", "MB/s"),
    ("yamux_8_16m", "yamux, 8 streams, 16 MiB window", "MB/s"),
    ("ws_256k", "yamux over WebSocket, 1 stream, 256 KiB", "MB/s"),
    ("ws_16m", "yamux over WebSocket, 1 stream, 16 MiB", "MB/s"),
    ("tiny", f"yamux, {TINY_SIZE}-byte writes on 1 stream", "writes/s"),
    ("tiny_frames", "  the same, frames sent", "frames/s"),
]


def _median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def report(py: list[dict[str, float]], go: list[dict[str, float]], malloc_tuned: bool) -> None:
    """Print the table with ratios."""
    print(
        f"{TOTAL // MIB} MiB per scenario, {ROUNDS} rounds (medians), writes of "
        f"{WRITE_SIZE // 1024} KiB; Python {sys.version.split()[0]} on uvloop, "
        f"malloc thresholds raised: {'yes' if malloc_tuned else 'no'}"
    )
    header = f"{'scenario':44} {'Python':>12} {'Go':>12} {'Py/Go':>7}"
    print(header)
    print("-" * len(header))
    for key, label, unit in ROWS:
        p, g = _median(py, key), _median(go, key)
        fmt = ",.0f"
        print(f"{label:44} {p:>12{fmt}} {g:>12{fmt}} {p / g:>7.2f}  {unit}")
    for key, label, _ in ROWS[1:5]:
        p = _median(py, key) / _median(py, "raw_tcp")
        g = _median(go, key) / _median(go, "raw_tcp")
        print(f"  share of own raw TCP, {label[7:]:34} Python {p:5.2f}   Go {g:5.2f}")


def main() -> None:
    """Build the Go peer, run both sides ``ROUNDS`` times, print the comparison."""
    binary = str(build_peer())
    malloc_tuned = tune_malloc()
    py_rounds: list[dict[str, float]] = []
    go_rounds: list[dict[str, float]] = []
    for _ in range(ROUNDS):
        go_rounds.append(go_round(binary))
        py_rounds.append(uvloop.run(python_round()))
    report(py_rounds, go_rounds, malloc_tuned)
