"""``visiona agent``: logging, signals and the event loop around :class:`Agent`."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import uuid
from pathlib import Path

from visiona.agent.runner import Agent, AgentOptions
from visiona.agent.usb import dongle_serial
from visiona.malloc import tune_malloc

_LOGGER = logging.getLogger(__name__)


def default_session_file() -> Path:
    """``~/.config/visiona/agent-session.json``."""
    return Path.home() / ".config" / "visiona" / "agent-session.json"


#: The file in the agent's state directory (beside its session file) holding the id
#: of this agent installation.
INSTALLATION_ID_FILE = "agent-id"


def installation_id(state_dir: Path) -> str:
    """This agent installation's own random id, created once in ``state_dir`` and kept."""
    path = state_dir / INSTALLATION_ID_FILE
    try:
        existing = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        existing = ""
    if len(existing) >= 12 and all(c in "0123456789abcdef" for c in existing):
        return existing
    created = uuid.uuid4().hex
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(created + "\n", encoding="ascii")
    return created


def default_serial(state_dir: Path) -> str:
    """The serial number an agent pairs with when ``--serial`` is not given.

    The dongle's own USB serial when one can be read; otherwise the host name and an id
    unique to this agent installation (kept in ``state_dir``), so two agents on one
    computer (two user accounts, two session files) never pair as the same device.
    """
    dongle = dongle_serial()
    if dongle:
        return dongle
    return f"{socket.gethostname()}-{installation_id(state_dir)[:12]}"


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
