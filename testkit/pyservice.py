"""The Python side of the interop tests: the stream command service and WebSocket glue.

The commands mirror those of the Go peer (see ``go/src/yamuxpeer/main.go``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from visiona.yamux import Config, FeedTransport, Session, Stream, YamuxError

_LOGGER = logging.getLogger(__name__)
_U64 = struct.Struct(">Q")


class CommandService:
    """Serves the test commands on every stream the peer opens; records outcomes."""

    def __init__(self, session: Session) -> None:
        """Start accepting on ``session``."""
        self.session = session
        self.outcomes: dict[str, Any] = {}
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accept_task = asyncio.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        while True:
            try:
                stream = await self.session.accept_stream()
            except YamuxError:
                return
            task = asyncio.create_task(self._serve(stream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _record(self, name: str, *, value: Any) -> None:
        self.outcomes[name] = value
        self.events.put_nowait((name, value))

    async def _serve(self, stream: Stream) -> None:
        try:
            command = await stream.readexactly(1)
            handler = getattr(self, f"_cmd_{command.decode()}")
            await handler(stream)
        except (YamuxError, asyncio.IncompleteReadError, ConnectionError) as err:
            self._record("error", value=repr(err))

    async def _cmd_E(self, stream: Stream) -> None:  # noqa: N802 - named after the wire command
        (size,) = _U64.unpack(await stream.readexactly(8))
        left = size
        while left:
            data = await stream.read(min(left, 1 << 20))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            stream.write(data)
            await stream.drain()
        stream.write_eof()
        await stream.wait_closed()

    async def _cmd_S(self, stream: Stream) -> None:  # noqa: N802 - named after the wire command
        digest = hashlib.sha256()
        count = 0
        while data := await stream.read(1 << 20):
            digest.update(data)
            count += len(data)
        stream.write(digest.digest() + _U64.pack(count))
        stream.close()

    async def _cmd_R(self, stream: Stream) -> None:  # noqa: N802 - named after the wire command
        header = await stream.readexactly(48)
        (reply_size,) = _U64.unpack(header[:8])
        (expect_size,) = _U64.unpack(header[8:16])
        data = os.urandom(reply_size)
        stream.write(hashlib.sha256(data).digest() + data)
        stream.write_eof()  # our direction is done; the peer's goes on
        received = await stream.read()
        ok = len(received) == expect_size and hashlib.sha256(received).digest() == header[16:]
        self._record("halfclose", value=ok)

    async def _cmd_X(self, stream: Stream) -> None:  # noqa: N802 - named after the wire command
        stream.reset()
        self._record("reset_sent", value=True)

    async def _cmd_A(self, stream: Stream) -> None:  # noqa: N802 - named after the wire command
        await self.session.go_away()
        stream.write(b"ok")
        stream.close()
        self._record("goaway_sent", value=True)

    async def _cmd_P(self, stream: Stream) -> None:  # noqa: N802 - named after the wire command
        rtt = await self.session.ping()
        stream.write(b"ok")
        stream.close()
        self._record("ping_rtt", value=rtt)

    async def aclose(self) -> None:
        """Stop accepting and wait for the command tasks."""
        self._accept_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(self._accept_task, *self._tasks, return_exceptions=True)


# -- WebSocket glue (the tunnel will have its own; this is the minimal version) ------------


async def _pump(ws: ClientConnection | ServerConnection, transport: FeedTransport) -> None:
    try:
        async for message in ws:
            transport.feed_data(message if isinstance(message, bytes) else message.encode())
    except ConnectionClosed as err:
        transport.connection_lost(err)
    finally:
        transport.connection_lost(None)


def ws_session(
    ws: ClientConnection | ServerConnection, *, client: bool, config: Config | None
) -> tuple[Session, asyncio.Task[None]]:
    """Run a yamux session over ``ws``; return it and the task feeding it."""
    transport = FeedTransport(ws.send, ws.close, extra={"peername": ws.remote_address})
    session = Session(transport, client=client, config=config)
    return session, asyncio.create_task(_pump(ws, transport))


@contextlib.asynccontextmanager
async def ws_client_session(
    url: str, *, client: bool, config: Config | None
) -> AsyncIterator[Session]:
    """Dial ``url`` and run a yamux session (``client`` side or not) over the WebSocket."""
    async with connect(url, max_size=None, compression=None) as ws:
        session, pump = ws_session(ws, client=client, config=config)
        try:
            yield session
        finally:
            await session.close()
            await asyncio.gather(pump, return_exceptions=True)


@contextlib.asynccontextmanager
async def ws_server(
    *, client: bool, config: Config | None
) -> AsyncIterator[tuple[int, asyncio.Queue[Session]]]:
    """Listen for WebSockets on 127.0.0.1:0; run a yamux session on each connection.

    Yields the port and a queue receiving each new session; a connection lasts until
    its session ends.
    """
    sessions: asyncio.Queue[Session] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        session, pump = ws_session(ws, client=client, config=config)
        await sessions.put(session)
        await session.closed.wait()
        await asyncio.gather(pump, return_exceptions=True)

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield port, sessions
