"""TCP forwards (``visiona forward``) against a direct loopback connection to the same service.

One ``visiona serve``, one real ``visiona agent --allow-port P`` and a TCP service on
port P (its own process), and the real ``visiona forward DEVICE 0:P`` listener. The
same client code drives the service directly and through the listener, in interleaved
rounds (direct, forward, direct, forward, ...):

- **throughput** of one connection: ``SIZE`` bytes up (client → service, then a 2-byte
  answer) and ``SIZE`` bytes down (service → client), MB/s;
- **connect latency**: ``CONNECTS`` sequential connections, each timed from
  ``connect()`` to the service's first byte (through the forward: the WebSocket
  upgrade with its checks, the stream to the agent, the agent's connect), p50 and p99.

Each figure is the median of ``ROUNDS`` rounds with its range, and forward/direct is
the number to read. Reproduce: ``.venv/bin/python -m bench forward`` (env
``FORWARD_BENCH_ROUNDS`` (3), ``FORWARD_BENCH_SIZE`` (67108864 = 64 MiB),
``FORWARD_BENCH_CONNECTS`` (200)).
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.bench_tunnel import API, Proc, _pairing_token, _user, _visiona_serve

ROUNDS = int(os.environ.get("FORWARD_BENCH_ROUNDS", "3"))
SIZE = int(os.environ.get("FORWARD_BENCH_SIZE", str(64 * 1024 * 1024)))
CONNECTS = int(os.environ.get("FORWARD_BENCH_CONNECTS", "200"))
_CHUNK = 256 * 1024
_BLOCK = bytes(range(256)) * (_CHUNK // 256)


# -- the service (run as `python -m bench.bench_forward service`) ---------------------


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Greet with one byte; then ``U<n>\\n`` (read n bytes, answer ``ok``), ``D<n>\\n``
    (send n bytes) or EOF (a latency probe)."""
    writer.write(b"!")
    line = await reader.readline()
    if line.startswith(b"U"):
        left = int(line[1:])
        while left > 0:
            chunk = await reader.read(min(left, _CHUNK * 4))
            if not chunk:
                break
            left -= len(chunk)
        writer.write(b"ok")
    elif line.startswith(b"D"):
        left = int(line[1:])
        while left > 0:
            piece = _BLOCK[: min(left, _CHUNK)]
            writer.write(piece)
            left -= len(piece)
            await writer.drain()
    await writer.drain()
    writer.close()


async def _service() -> None:
    server = await asyncio.start_server(_serve_one, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


# -- the client ----------------------------------------------------------------------


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await reader.readexactly(1) == b"!"  # noqa: S101 - the service's greeting
    return reader, writer


async def _up(port: int) -> float:
    reader, writer = await _open(port)
    started = time.perf_counter()
    writer.write(b"U%d\n" % SIZE)
    left = SIZE
    while left > 0:
        piece = _BLOCK[: min(left, _CHUNK)]
        writer.write(piece)
        left -= len(piece)
        await writer.drain()
    assert await reader.readexactly(2) == b"ok"  # noqa: S101 - the service read it all
    elapsed = time.perf_counter() - started
    writer.close()
    return SIZE / elapsed / 1e6


async def _down(port: int) -> float:
    reader, writer = await _open(port)
    started = time.perf_counter()
    writer.write(b"D%d\n" % SIZE)
    left = SIZE
    while left > 0:
        chunk = await reader.read(_CHUNK * 4)
        if not chunk:
            raise RuntimeError(f"the download ended {left} bytes short")
        left -= len(chunk)
    elapsed = time.perf_counter() - started
    writer.close()
    return SIZE / elapsed / 1e6


async def _latencies(port: int) -> list[float]:
    times = []
    for _ in range(CONNECTS):
        started = time.perf_counter()
        reader, writer = await _open(port)
        times.append((time.perf_counter() - started) * 1000)
        writer.write_eof()
        await reader.read()
        writer.close()
    return times


async def _round(port: int) -> dict[str, float]:
    up = await _up(port)
    down = await _down(port)
    times = sorted(await _latencies(port))
    return {
        "up MB/s": up,
        "down MB/s": down,
        "connect p50 ms": statistics.median(times),
        "connect p99 ms": times[min(len(times) - 1, int(len(times) * 0.99))],
    }


# -- the set-up -----------------------------------------------------------------------


def _device_id(base: str, token: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        items = httpx.get(f"{base}{API}/devices", headers=headers).json()["items"]
        if items and items[0]["remote_status"] == "online" and items[0]["tcp_ports"]:
            return str(items[0]["id"])
        time.sleep(0.2)
    raise RuntimeError("the agent did not come online")


def _listener(base: str, token: str, device_id: str, port: int, tmp: Path) -> tuple[Proc, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONA_")}
    env["XDG_CONFIG_HOME"] = str(tmp / "client")
    (tmp / "client" / "visiona").mkdir(parents=True, exist_ok=True)
    creds = tmp / "client" / "visiona" / "credentials.json"
    creds.write_text(f'{{"server": "{base}", "token": "{token}", "email": "bench@example.com"}}')
    creds.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "visiona", "forward", device_id, f"0:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None  # noqa: S101 - piped above
    line = proc.stderr.readline()
    found = re.search(r"127\.0\.0\.1:(\d+) →", line)
    if not found:
        proc.kill()
        raise RuntimeError(f"visiona forward did not start: {line!r}")
    wrapper = Proc.__new__(Proc)
    wrapper.proc = proc
    return wrapper, int(found.group(1))


def main() -> None:
    """Measure direct and forwarded connections, interleaved; print medians and ratios."""
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp_name:
        tmp = Path(tmp_name)
        service = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_forward", "service"],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs: list[Proc] = []
        try:
            assert service.stdout is not None  # noqa: S101 - piped above
            port = int(service.stdout.readline())
            with _visiona_serve(tmp / "data") as (base, _server):
                token = _user(base)
                agent = Proc(
                    sys.executable, "-m", "visiona", "agent", "--server", base,
                    "--token", _pairing_token(base, token), "--forward", "127.0.0.1:9",
                    "--allow-port", str(port), "--session-file", str(tmp / "agent.json"),
                    "--serial", "BENCH-FWD", "--name", "forward",
                )  # fmt: skip
                procs.append(agent)
                device_id = _device_id(base, token)
                listener, local = _listener(base, token, device_id, port, tmp)
                procs.append(listener)
                runs: dict[str, dict[str, list[float]]] = {"direct": {}, "forward": {}}
                for _ in range(ROUNDS):
                    for name, target in (("direct", port), ("forward", local)):
                        for key, value in asyncio.run(_round(target)).items():
                            runs[name].setdefault(key, []).append(value)
                _report(runs)
        finally:
            for proc in procs:
                proc.stop()
            service.terminate()
            service.wait(timeout=15)


def _report(runs: dict[str, dict[str, list[float]]]) -> None:
    print(
        f"{ROUNDS} interleaved rounds; {SIZE / 1e6:.1f} MB each way; {CONNECTS} connects per round"
    )
    for key in runs["direct"]:
        direct, forward = runs["direct"][key], runs["forward"][key]
        med_d, med_f = statistics.median(direct), statistics.median(forward)
        print(
            f"{key:<15} direct {med_d:9.2f} [{min(direct):.2f}-{max(direct):.2f}]  |  "
            f"forward {med_f:9.2f} [{min(forward):.2f}-{max(forward):.2f}]  |  "
            f"forward/direct x{med_f / med_d:.3f}"
        )


if __name__ == "__main__" and sys.argv[1:] == ["service"]:
    asyncio.run(_service())
