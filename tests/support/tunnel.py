"""Test helpers for the tunnel: a live uvicorn server and a minimal Python agent.

The agent here is deliberately small (websockets client + yamux server session +
a handler per stream) so that server tests do not depend on ``visiona agent``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from testkit.live import LiveServer
from tests.support.api import User
from tests.support.devices import pair, pairing_token
from visiona.yamux import Config, FeedTransport, Session, Stream, YamuxError

API = "/api/v1"
StreamHandler = Callable[[Stream], Awaitable[None]]


async def echo_handler(stream: Stream) -> None:
    """Copy everything back, then half-close."""
    while chunk := await stream.read(1 << 20):
        stream.write(chunk)
        await stream.drain()
    stream.write_eof()


@dataclass
class FakeAgent:
    """A connected agent: a WebSocket and the yamux server session over it."""

    ws: ClientConnection
    session: Session
    handler: StreamHandler
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    close_code: int | None = None
    close_reason: str | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    #: while true, received bytes are held (not fed): the agent looks dead to pings
    deaf: bool = False
    held: list[bytes] = field(default_factory=list)
    #: sizes of the binary messages received and sent, in order
    message_sizes: list[int] = field(default_factory=list)
    sent_sizes: list[int] = field(default_factory=list)

    async def _accept_loop(self) -> None:
        with contextlib.suppress(YamuxError):
            while True:
                stream = await self.session.accept_stream()
                task = asyncio.create_task(self._handle(stream))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _handle(self, stream: Stream) -> None:
        try:
            await self.handler(stream)
        except YamuxError:
            stream.reset()

    async def _read_loop(self, transport: FeedTransport) -> None:
        try:
            async for message in self.ws:
                if not isinstance(message, bytes):
                    continue
                self.message_sizes.append(len(message))
                if self.deaf:
                    self.held.append(message)
                    continue
                for chunk in self.held:
                    transport.feed_data(chunk)
                self.held.clear()
                transport.feed_data(message)
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd else None
            self.close_reason = rcvd.reason if rcvd else None
            self.closed.set()
            transport.connection_lost(None)


@contextlib.asynccontextmanager
async def connect_agent(
    server: LiveServer,
    token: str,
    handler: StreamHandler = echo_handler,
    *,
    config: Config | None = None,
) -> AsyncIterator[FakeAgent]:
    """Open a tunnel as the agent holding ``token``; close it on exit."""
    ws = await connect(
        server.ws_url,
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=None,
        compression=None,
    )
    sent_sizes: list[int] = []

    async def send(data: bytes) -> None:
        sent_sizes.append(len(data))
        await ws.send(data)

    transport = FeedTransport(send, ws.close)
    session = Session(
        transport, client=False, config=config or Config(max_stream_window=16 * 1024 * 1024)
    )
    agent = FakeAgent(ws=ws, session=session, handler=handler, sent_sizes=sent_sizes)
    background = [
        asyncio.create_task(agent._read_loop(transport)),
        asyncio.create_task(agent._accept_loop()),
    ]
    try:
        yield agent
    finally:
        await session.close()
        await ws.close()
        for task in [*background, *agent.tasks]:
            task.cancel()
        await asyncio.gather(*background, *agent.tasks, return_exceptions=True)


async def paired_agent_token(client: httpx.AsyncClient, user: User) -> tuple[str, str]:
    """Pair a new device for ``user``; return ``(device_id, session_token)``."""
    created = await pairing_token(client, user)
    response = await pair(client, created["token"])
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return str(body["device_id"]), str(body["session_token"])


async def wait_for(predicate: Callable[[], Awaitable[bool]], *, limit: float = 10.0) -> None:
    """Poll ``predicate`` until true; ``limit`` only guards against a hang (no speed claim)."""
    async with asyncio.timeout(limit):
        while not await predicate():  # noqa: ASYNC110 - polls state no event announces
            await asyncio.sleep(0.02)


async def _copy(reader: Any, writer: Any) -> None:
    """Copy until EOF, then half-close the writer."""
    while chunk := await reader.read(1 << 20):
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()


def forward_to(port: int) -> StreamHandler:
    """A stream handler dialing ``127.0.0.1:port`` and copying both ways with half-close."""

    async def handler(stream: Stream) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stream.reset()
            return
        try:
            await asyncio.gather(_copy(stream, writer), _copy(reader, stream))
        except (OSError, YamuxError):
            stream.reset()
        finally:
            writer.close()
            stream.close()

    return handler
