"""``visiona serve --workers N``: N node processes on one public port, one machine.

The supervisor (the ``serve`` process) checks the configuration, applies migrations
when asked, reserves the public port (bound with ``SO_REUSEPORT``, never listening)
and starts N workers, each ``visiona serve --worker I``. Every worker binds the public
port itself with ``SO_REUSEPORT`` (the kernel spreads new connections over the
workers' listening sockets) and one internal listener of its own on a kernel-chosen
port of the same host: its node URL, where the other workers forward to (the public
port cannot name one worker). Each worker is a cluster node with its own id
(``<VISIONA_NODE_ID>-w<I>``, or random); the workers share Redis and, unless
``VISIONA_INTERNAL_TOKEN`` is set, a token the supervisor generates per start.

A worker that exits while the supervisor is not stopping is started again after a
second; three that exit within five seconds of their start in a row stop everything
(a configuration the workers refuse). SIGTERM or SIGINT stops every worker (each
closes its tunnels with 1001 and drains its requests) before the supervisor exits.

This module is imported by the command line only (no server stack at import).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import socket
    from types import FrameType

    from visiona.kit.settings import Settings

_LOGGER = logging.getLogger(__name__)
WORKER_TOKEN_ENV = "VISIONA_INTERNAL_TOKEN"  # noqa: S105 - a variable name, not a secret
_RESTART_DELAY = 1.0
_FAST_EXIT = 5.0
_FAST_EXITS_ALLOWED = 3


def worker_settings(settings: Settings, index: int, internal: socket.socket) -> Settings:
    """Worker ``index``'s settings: its own node id and the URL of its internal listener.

    The host other nodes reach is VISIONA_NODE_URL's when set (its port is replaced by
    the worker's internal port), else the bind host (loopback for a wildcard bind).
    """
    port = internal.getsockname()[1]
    if settings.node_url:
        parts = urlsplit(settings.node_url)
        scheme, host = parts.scheme, parts.hostname or "127.0.0.1"
    else:
        scheme, host = "http", settings.host.strip("[]")
        if host in {"", "0.0.0.0", "::"}:  # noqa: S104 - recognising a wildcard, not binding one
            host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    node_id = f"{settings.node_id}-w{index}" if settings.node_id else None
    return settings.model_copy(
        update={"node_url": f"{scheme}://{shown}:{port}", "node_id": node_id}
    )


def worker_env(settings: Settings) -> dict[str, str]:
    """The workers' environment: the caller's, plus a per-start internal token if none."""
    env = dict(os.environ)
    if settings.internal_token is None:
        env[WORKER_TOKEN_ENV] = secrets.token_urlsafe(32)
    return env


class Supervisor:
    """Starts, restarts and stops the worker processes."""

    def __init__(self, count: int, host: str, port: int, env: dict[str, str]) -> None:
        """Prepare ``count`` workers serving ``host:port``."""
        self._count = count
        self._host = host
        self._port = port
        self._env = env
        self._procs: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self._stopping = False
        self._fast_exits = 0

    def _spawn(self, index: int) -> None:
        argv = [
            sys.executable,
            "-m",
            "visiona",
            "serve",
            "--host",
            self._host,
            "--port",
            str(self._port),
            "--worker",
            str(index),
        ]
        self._procs[index] = (subprocess.Popen(argv, env=self._env), time.monotonic())  # noqa: S603 - our own command

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        for proc, _ in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        _LOGGER.info("serve: stopping %s worker(s) (signal %s)", len(self._procs), signum)

    def run(self) -> int:
        """Run until stopped by a signal (0) or until workers keep failing (1)."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for index in range(self._count):
            self._spawn(index)
        _LOGGER.info("serve: %s workers on port %s", self._count, self._port)
        while not self._stopping:
            time.sleep(0.2)
            for index, (proc, started) in list(self._procs.items()):
                code = proc.poll()
                if code is None or self._stopping:
                    continue
                quick = time.monotonic() - started < _FAST_EXIT
                self._fast_exits = self._fast_exits + 1 if quick else 0
                if self._fast_exits >= _FAST_EXITS_ALLOWED:
                    _LOGGER.error("serve: workers keep exiting (last code %s); stopping", code)
                    self._stop(signal.SIGTERM, None)
                    self._wait()
                    return 1
                _LOGGER.warning("serve: worker %s exited (code %s); restarting", index, code)
                time.sleep(_RESTART_DELAY)
                self._spawn(index)
        self._wait()
        return 0

    def _wait(self) -> None:
        deadline = time.monotonic() + 30
        for proc, _ in self._procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
