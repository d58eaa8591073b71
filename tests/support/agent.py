"""Support of the agent tests: options of an in-process agent, running it, its CLI."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from testkit.live import LiveServer
from tests.support.api import User
from tests.support.tunnel import API
from visiona.agent.runner import Agent, AgentOptions


def agent_options(live: LiveServer, port: int, path: Path, token: str | None) -> AgentOptions:
    """Options of an in-process agent paired with ``live``, forwarding to ``port``."""
    return AgentOptions(
        server=live.url,
        forward_host="127.0.0.1",
        forward_port=port,
        session_file=path,
        pairing_token=token,
        name="Test agent",
        serial_number=f"SN-{uuid.uuid4().hex[:10]}",
        device_type="kl720",
        usb_poll_interval=0.2,
    )


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[int]]]:
    """Run ``agent`` in the background; stop it on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield stop, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def only_device(http: httpx.AsyncClient, user: User) -> dict[str, object]:
    """The user's one device, as the API lists it."""
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert len(items) == 1
    device: dict[str, object] = items[0]
    return device


async def agent_cli(*args: str) -> asyncio.subprocess.Process:
    """``visiona agent ARGS`` in a child process, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "visiona",
        "agent",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
