"""TCP-forward test support: an echo service on loopback, an agent allowing ports, the
agent's own stream handling as a test peer's handler."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from testkit.live import LiveServer
from tests.support.agent import agent_options
from tests.support.api import User, signup
from tests.support.devices import pairing_token
from visiona.agent.deploy import DeploySettings, dispatch_stream
from visiona.agent.policy import build_policy
from visiona.agent.runner import Agent
from visiona.yamux import Stream


class EchoService:
    """A TCP service on a loopback port: greets, echoes, half-closes after the client's EOF."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"hello\n")  # a server that speaks first (as sshd does)
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(1 << 16):
                writer.write(chunk)
                await writer.drain()
            writer.write(b"bye\n")  # after the client's EOF: the half-close held
            writer.write_eof()
            await writer.drain()
        writer.close()


async def tcp_agent(
    live: LiveServer, http: httpx.AsyncClient, tmp_path: Path, ports: list[int | str]
) -> tuple[User, Agent]:
    """A new user and an agent allowing ``ports`` (its HTTP target a dead port)."""
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    # the HTTP forward target is a dead port: TCP streams must not depend on it
    options = replace(
        agent_options(live, 9, tmp_path / "s.json", token), policy=build_policy([], ports=ports)
    )
    return user, Agent(options)


def agent_dispatcher(ports: list[int | str]) -> Any:
    """The real agent's stream handling, without its status reports (ports never said)."""
    policy = build_policy([], ports=ports)

    async def handler(stream: Stream) -> None:
        await dispatch_stream(
            stream, "127.0.0.1", 9, DeploySettings(Path("/nonexistent")), policy=policy
        )

    return handler
