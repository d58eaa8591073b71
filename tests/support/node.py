"""One real `visiona serve` process on loopback (port 0), with a resource limit if asked."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

_SERVING = re.compile(rb"visiona running on http://127\.0\.0\.1:(\d+)")


@dataclass
class ServeProcess:
    """A running `visiona serve`: its process, port and log file."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The agent tunnel endpoint."""
        return f"ws://127.0.0.1:{self.port}/api/v1/agent/tunnel"

    def text(self) -> str:
        """The log so far."""
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the exit code (SIGKILL if it hangs)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def nofile_limit(soft: int, hard: int) -> Callable[[], None]:
    """A ``preexec_fn`` setting the child's limit on open files to ``soft``/``hard``."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def sqlite_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a node on its own SQLite file in ``data_dir`` (``settings`` added)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONA_")}
    base = {
        "database_url": f"sqlite:///{data_dir / 'visiona.db'}",
        "data_dir": str(data_dir),
        "log_level": "INFO",
        "pair_rate_limit": "100000",
        "login_rate_limit": "100000",
        "login_rate_limit_per_address": "100000",
    }
    env.update({f"VISIONA_{k.upper()}": v for k, v in {**base, **settings}.items()})
    return env


@contextlib.contextmanager
def serve_process(
    env: dict[str, str], *, preexec: Callable[[], None] | None = None, timeout: float = 120
) -> Iterator[ServeProcess]:
    """Run `visiona serve` on 127.0.0.1:0 until ``/healthz`` answers; SIGTERM on exit."""
    log = Path(tempfile.mkstemp(prefix="visiona-serve-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "visiona", "serve"],
            env={**env, "VISIONA_HOST": "127.0.0.1", "VISIONA_PORT": "0"},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
            preexec_fn=preexec,  # noqa: PLW1509 - only setrlimit, before exec
        )
    node: ServeProcess | None = None
    try:
        deadline = time.monotonic() + timeout
        while node is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"visiona serve did not start:\n{log.read_text()[-3000:]}")
            found = _SERVING.search(log.read_bytes())
            if found:
                with contextlib.suppress(httpx.HTTPError):
                    url = f"http://127.0.0.1:{found.group(1).decode()}/healthz"
                    if httpx.get(url, timeout=2).status_code == 200:
                        node = ServeProcess(proc, int(found.group(1)), log)
                        break
            time.sleep(0.1)
        yield node
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
