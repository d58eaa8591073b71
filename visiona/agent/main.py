"""``visiona agent``: logging, signals and the event loop around :class:`Agent`."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import uuid
from pathlib import Path

from visiona.agent.runner import Agent, AgentOptions
from visiona.malloc import tune_malloc

_LOGGER = logging.getLogger(__name__)


def default_session_file() -> Path:
    """``~/.config/visiona/agent-session.json``."""
    return Path.home() / ".config" / "visiona" / "agent-session.json"


def default_serial() -> str:
    """A serial number stable for this machine: host name and MAC address."""
    return f"{socket.gethostname()}-{uuid.getnode():012x}"


def parse_forward(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → ``(host, port)``; ``ValueError`` otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--forward must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def _run(options: AgentOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await Agent(options).run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_agent(options: AgentOptions) -> int:
    """Run the agent until SIGTERM/SIGINT (0) or refused credentials (3); uvloop if present."""
    tune_malloc()
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_run(options))
