"""Build and drive the Go (hashicorp/yamux) peer used by the interop tests and the bench.

The peer's source is ``testkit/go/src/yamuxpeer`` (and ``tunnelpeer``); it is built in GOPATH mode
(no module proxy here) against Debian's ``golang-github-hashicorp-yamux-dev`` and
``golang-github-gorilla-websocket-dev`` into ``testkit/bin/`` (gitignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN_DIR = HERE / "bin"
SYSTEM_GOPATH = "/usr/share/gocode"


class GoPeerError(RuntimeError):
    """The Go peer could not be built or misbehaved."""


def build_go_program(name: str) -> Path:
    """Build ``testkit/go/src/<name>`` (incremental: a cached GOCACHE) into bin/."""
    go = shutil.which("go")
    if go is None:
        raise GoPeerError("go is not installed: run `make system-deps` (scripts/system-deps.sh)")
    BIN_DIR.mkdir(exist_ok=True)
    binary = BIN_DIR / name
    with tempfile.TemporaryDirectory(prefix=f"{name}-gopath-") as gopath:
        src = Path(gopath) / "src"
        src.mkdir()
        (src / name).symlink_to(HERE / "go" / "src" / name, target_is_directory=True)
        env = {
            **os.environ,
            "GOPATH": f"{gopath}:{SYSTEM_GOPATH}",
            "GO111MODULE": "off",
            "GOFLAGS": "",
            "GOCACHE": str(BIN_DIR / "gocache"),
            "CGO_ENABLED": "0",
        }
        proc = subprocess.run(
            [go, "build", "-o", str(binary), name],
            cwd=gopath,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise GoPeerError(f"go build failed:\n{proc.stdout}{proc.stderr}")
    return binary


def build_peer() -> Path:
    """Build the yamux peer and return its path."""
    return build_go_program("yamuxpeer")


def build_tunnel_peer() -> Path:
    """Build the Go tunnel peer (agent and cloud stand-in) and return its path."""
    return build_go_program("tunnelpeer")


class GoPeer:
    """A running ``yamuxpeer`` process and the JSON events it prints."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        """Wrap ``proc`` (started with stdout and stderr pipes)."""
        self.proc = proc
        self.stderr: list[str] = []
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._backlog: list[dict[str, Any]] = []
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                await self._events.put(json.loads(line))
        await self._events.put({"event": "exit"})

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def event(self, name: str, *, limit: float = 60.0) -> dict[str, Any]:
        """Return the next event called ``name`` (others are kept for later calls).

        ``limit`` only guards against a hung peer (seconds); it is no assertion on speed.
        """
        for index, event in enumerate(self._backlog):
            if event["event"] == name:
                return self._backlog.pop(index)
        async with asyncio.timeout(limit):
            while True:
                event = await self._events.get()
                if event["event"] == name:
                    return event
                if event["event"] == "exit":
                    raise GoPeerError(
                        f"peer exited while waiting for {name!r}; stderr:\n"
                        + "\n".join(self.stderr[-20:])
                    )
                self._backlog.append(event)

    def events_seen(self) -> list[dict[str, Any]]:
        """Events received but not consumed by :meth:`event`."""
        while not self._events.empty():
            self._backlog.append(self._events.get_nowait())
        return list(self._backlog)

    async def wait(self, *, limit: float = 30.0) -> int:
        """Wait (at most ``limit`` seconds) for the process to exit; return its exit code."""
        async with asyncio.timeout(limit):
            code = await self.proc.wait()
            await asyncio.gather(*self._tasks)
        return code

    async def stop(self) -> None:
        """Kill the process if it still runs and reap it."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def run_peer(binary: Path, *args: str) -> AsyncIterator[GoPeer]:
    """Start ``binary`` with ``args``; kill it on exit if it is still running."""
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    peer = GoPeer(proc)
    try:
        yield peer
    finally:
        await peer.stop()


class GoFleet:
    """A running ``tunnelpeer -mode fleet``: many agents in one Go process.

    :attr:`progress` is its latest progress line (``up``, ``connects``, ``refused``,
    ``failed``, ``denied``, ``closed``, ``answered``, ``statuses``; see
    ``testkit/go/src/tunnelpeer/fleet.go``).
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        """Follow ``proc``'s progress lines (started with a stdout pipe)."""
        self.proc = proc
        self.progress: dict[str, Any] = {"up": 0, "connects": 0, "refused": 0, "failed": 0}
        self.stopped = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, binary: Path, server: str, tokens: Path, *args: str) -> GoFleet:
        """Start one agent per line of ``tokens`` against ``server`` (``http://host:port``)."""
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "-mode",
            "fleet",
            "-server",
            server,
            "-tokens",
            str(tokens),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "progress":
                    self.progress = event
                elif event.get("event") == "stopped":
                    self.stopped.set()

    async def until(self, check: Any, *, limit: float = 600.0, step: float = 0.05) -> float:
        """Seconds until ``check(progress)`` is true (``limit`` guards a hung run)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not check(self.progress):
            if self.proc.returncode is not None:
                raise GoPeerError(f"the fleet exited ({self.proc.returncode})")
            if loop.time() - started > limit:
                raise GoPeerError(f"the fleet waited too long; last progress {self.progress}")
            await asyncio.sleep(step)
        return loop.time() - started

    async def stop(self, *, limit: float = 30.0) -> int:
        """SIGTERM (every tunnel closed 1000), wait for the exit; kill past ``limit`` s."""
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            async with asyncio.timeout(limit):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)
        return code


def _shards(tokens: Path, per_process: int) -> list[Path]:
    """``tokens`` cut into files of ``per_process`` lines beside it."""
    lines = [line for line in tokens.read_text().splitlines() if line]
    shards = []
    for number, start in enumerate(range(0, len(lines), per_process)):
        shard = tokens.with_name(f"{tokens.stem}.{number}{tokens.suffix}")
        shard.write_text("".join(f"{line}\n" for line in lines[start : start + per_process]))
        shards.append(shard)
    return shards


class FleetGroup:
    """Several :class:`GoFleet` processes as one: a process's open files are bounded (the
    hard limit), so 20,000 agents take more than one. :attr:`progress` sums theirs."""

    def __init__(self, fleets: Sequence[GoFleet]) -> None:
        """Follow ``fleets`` together."""
        self.fleets = list(fleets)

    @classmethod
    async def start(
        cls, binary: Path, server: str, tokens: Path, *args: str, per_process: int
    ) -> FleetGroup:
        """Start the agents of ``tokens`` (one per line), ``per_process`` per process."""
        shards = await asyncio.to_thread(_shards, tokens, per_process)
        return cls([await GoFleet.start(binary, server, shard, *args) for shard in shards])

    @property
    def progress(self) -> dict[str, Any]:
        """The fleets' progress lines added up (counts summed, ``statuses`` merged)."""
        total: dict[str, Any] = {"statuses": {}}
        for fleet in self.fleets:
            for key, value in fleet.progress.items():
                if key == "statuses" and isinstance(value, dict):
                    for status, count in value.items():
                        total["statuses"][status] = total["statuses"].get(status, 0) + count
                elif isinstance(value, int) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        return total

    async def until(self, check: Any, *, limit: float = 600.0, step: float = 0.05) -> float:
        """Seconds until ``check(progress)`` is true (``limit`` guards a hung run)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not check(self.progress):
            for fleet in self.fleets:
                if fleet.proc.returncode is not None:
                    raise GoPeerError(f"a fleet exited ({fleet.proc.returncode})")
            if loop.time() - started > limit:
                raise GoPeerError(f"the fleet waited too long; last progress {self.progress}")
            await asyncio.sleep(step)
        return loop.time() - started

    async def stop(self, *, limit: float = 30.0) -> int:
        """Stop every fleet (as :meth:`GoFleet.stop`); the first non-zero exit code, or 0."""
        codes = await asyncio.gather(*(fleet.stop(limit=limit) for fleet in self.fleets))
        return next((code for code in codes if code), 0)


@contextlib.asynccontextmanager
async def run_fleet(
    binary: Path, server: str, tokens: Sequence[str], *args: str
) -> AsyncIterator[GoFleet]:
    """A fleet of one agent per session token in ``tokens``; stopped (SIGTERM) on exit."""
    with tempfile.NamedTemporaryFile("w", prefix="fleet-tokens-", suffix=".txt") as listed:
        listed.write("\n".join(tokens) + "\n")
        listed.flush()
        fleet = await GoFleet.start(binary, server, Path(listed.name), *args)
        try:
            yield fleet
        finally:
            await fleet.stop()
