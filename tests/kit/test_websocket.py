"""The WebSocket protocol of ``visiona serve``: uvicorn's, plus the direct byte path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from visiona.kit.websocket import TunnelWebSocketProtocol, UpgradeAbandonedError, direct_opener
from visiona.yamux import MessageTransport

Channel = Callable[..., Awaitable[Any]]
Handler = Callable[[dict[str, Any], Channel, Channel], Awaitable[None]]


class Sink:
    """A TransportSink that records what the transport delivers."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.arrived = asyncio.Event()
        self.lost: list[BaseException | None] = []
        self.ended = asyncio.Event()
        self.paused = 0
        self.resumed = 0

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        self.arrived.set()

    def eof_received(self) -> None:
        self.ended.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.ended.set()

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, ws: Any = TunnelWebSocketProtocol, **options: Any
) -> AsyncIterator[str]:
    """Run ``handler`` as the ASGI app of a uvicorn on 127.0.0.1:0; yield its ws:// URL."""
    config = uvicorn.Config(
        handler, host="127.0.0.1", port=0, ws=ws, lifespan="off", log_config=None, **options
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def _accept(receive: Channel, send: Channel) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})


async def _until_queued(protocol: TunnelWebSocketProtocol) -> None:
    """Wait (bounded) until the early messages wait in uvicorn's ASGI queue: both of them,
    or as many as arrived before uvicorn paused reading for the app to catch up."""

    def queued() -> bool:
        return protocol.queue.qsize() >= 2 or (protocol.read_paused and protocol.queue.qsize() > 0)

    async with asyncio.timeout(10):
        while not queued():  # noqa: ASYNC110 - uvicorn's queue offers no event to wait on
            await asyncio.sleep(0.001)


async def test_messages_sent_before_the_direct_path_opened_are_delivered_first():
    opened = asyncio.Event()
    early_sent = asyncio.Event()
    sink = Sink()
    transports: list[MessageTransport] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _accept(receive, send)
        await early_sent.wait()
        opener = direct_opener(scope)
        assert opener is not None
        await _until_queued(cast(Any, opener).__self__)
        transport = opener(lambda: (1000, ""), 1024)
        transport.attach(sink)
        transports.append(transport)
        opened.set()
        await sink.ended.wait()

    async with serve(app) as url, connect(url) as client:
        await client.send(b"one")
        await client.send(b"two")
        early_sent.set()
        await opened.wait()
        await client.send(b"three")
        while sum(map(len, sink.received)) < len(b"onetwothree"):
            sink.arrived.clear()
            await asyncio.wait_for(sink.arrived.wait(), 5)
        assert b"".join(sink.received) == b"onetwothree"


async def test_direct_writes_reach_the_peer_as_binary_messages_cut_at_max_message():
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _accept(receive, send)
        opener = direct_opener(scope)
        assert opener is not None
        sink = Sink()
        transport = opener(lambda: (4000, "done here"), 4)
        transport.attach(sink)
        transport.write(b"hello")
        transport.writelines([b"ab", b"cd"])
        transport.close()
        await sink.ended.wait()

    async with serve(app) as url, connect(url) as client:
        messages = [await client.recv() for _ in range(3)]
        assert messages == [b"hell", b"o", b"abcd"]
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "done here")


async def test_a_text_message_on_the_direct_path_closes_with_1003():
    sink = Sink()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _accept(receive, send)
        opener = direct_opener(scope)
        assert opener is not None
        opener(lambda: (1000, ""), 1024).attach(sink)
        await sink.ended.wait()

    async with serve(app) as url, connect(url) as client:
        await client.send("not bytes")
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1003
    await asyncio.wait_for(sink.ended.wait(), 5)
    assert sink.lost
    assert isinstance(sink.lost[0], ConnectionError)


async def test_the_peer_closing_ends_the_direct_transport():
    sink = Sink()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _accept(receive, send)
        opener = direct_opener(scope)
        assert opener is not None
        opener(lambda: (1000, ""), 1024).attach(sink)
        await sink.ended.wait()

    async with serve(app) as url:
        client: ClientConnection = await connect(url)
        await client.send(b"x")
        await client.close()
        await asyncio.wait_for(sink.ended.wait(), 5)
    assert sink.received == [b"x"]
    assert sink.lost == [None]


async def _stalled_client(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that upgrades and then reads nothing (its buffers fill up)."""
    host_port = url.removeprefix("ws://").rstrip("/")
    host, port = host_port.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def test_a_full_socket_buffer_pauses_the_direct_transport():
    sink = Sink()
    paused = asyncio.Event()
    resumed = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _accept(receive, send)
        opener = direct_opener(scope)
        assert opener is not None
        transport = opener(lambda: (1000, ""), 64 * 1024)
        transport.attach(sink)
        chunk = b"x" * (64 * 1024)
        while not transport.write_paused:  # the client reads nothing
            transport.write(chunk)
            await asyncio.sleep(0)
        paused.set()
        await asyncio.wait_for(transport.drain(), 30)
        resumed.set()
        transport.abort()

    async with serve(app) as url:
        reader, writer = await _stalled_client(url)
        await asyncio.wait_for(paused.wait(), 30)
        assert (sink.paused, sink.resumed) == (1, 0)
        with contextlib.suppress(ConnectionError):
            while not resumed.is_set():  # now the client reads
                if not await reader.read(1024 * 1024):
                    break
        await asyncio.wait_for(resumed.wait(), 30)
        writer.close()
    assert sink.resumed == 1


async def test_another_server_offers_no_direct_path():
    offered: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _accept(receive, send)
        offered.append(direct_opener(scope))
        await send({"type": "websocket.close", "code": 1000})

    async with serve(app, ws="websockets-sansio") as url, connect(url) as client:
        with pytest.raises(ConnectionClosed):
            await client.recv()
    assert offered == [None]


async def test_a_peer_gone_before_the_upgrade_completed_is_abandoned_with_no_answer(
    caplog: pytest.LogCaptureFixture,
):
    outcome: list[BaseException] = []
    done = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        opener = direct_opener(scope)
        assert opener is not None
        protocol: TunnelWebSocketProtocol = opener.__self__  # type: ignore[attr-defined]
        protocol.transport.close()  # the peer's socket is closing, not yet lost
        try:
            await _accept(receive, send)  # uvicorn sends no 101 on a closing socket
            opener(lambda: (1000, ""), 1024)
        except UpgradeAbandonedError as err:
            outcome.append(err)
        finally:
            done.set()

    async with serve(app) as url:
        reader, writer = await _raw_upgrade(url)
        await asyncio.wait_for(done.wait(), 10)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert [type(err) for err in outcome] == [UpgradeAbandonedError]
    assert answer == b""  # neither a 101 nor uvicorn's plain-text 500
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert problems == [], [r.getMessage() for r in problems]


async def _raw_upgrade(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a WebSocket upgrade request and return the connection unread."""
    host_port = url.removeprefix("ws://").rstrip("/")
    host, port = host_port.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def test_an_upgrade_pending_when_the_server_stops_gets_503_json_not_a_plain_500(
    caplog: pytest.LogCaptureFixture,
):
    entered = asyncio.Event()
    outcome: list[BaseException] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        opener = direct_opener(scope)
        protocol: TunnelWebSocketProtocol = opener.__self__  # type: ignore[union-attr]
        entered.set()
        while not protocol.close_sent:  # noqa: ASYNC110 - still checking the token
            await asyncio.sleep(0.01)
        try:
            await _accept(receive, send)  # the token checked out, but too late
        except OSError as err:
            outcome.append(err)

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, ws=TunnelWebSocketProtocol, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    reader, writer = await _raw_upgrade(f"ws://127.0.0.1:{port}/")
    await asyncio.wait_for(entered.wait(), 10)
    server.should_exit = True
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await asyncio.wait_for(task, 15)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nRetry-After: 5" in head
    assert b"\r\nContent-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == "service_unavailable"
    assert len(outcome) == 1  # the app's late accept found no one, quietly
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert problems == [], [r.getMessage() for r in problems]


def _direct_app(
    sink: Sink, protocols: list[TunnelWebSocketProtocol]
) -> Callable[[dict[str, Any], Any, Any], Awaitable[None]]:
    """An app that opens the direct path into ``sink`` and records the protocol."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _accept(receive, send)
        opener = direct_opener(scope)
        assert opener is not None
        protocols.append(cast(Any, opener).__self__)
        opener(lambda: (1000, ""), 1 << 20).attach(sink)
        await sink.ended.wait()

    return app


async def _until_received(sink: Sink, size: int) -> bytes:
    async with asyncio.timeout(10):
        while sum(map(len, sink.received)) < size:
            sink.arrived.clear()
            await sink.arrived.wait()
    return b"".join(sink.received)


async def test_binary_messages_are_read_in_place_and_control_frames_still_answered():
    sink = Sink()
    protocols: list[TunnelWebSocketProtocol] = []
    sizes = [1, 125, 126, 300, 70_000, 12]
    messages = [bytes([i]) * size for i, size in enumerate(sizes)]
    async with (
        serve(_direct_app(sink, protocols)) as url,
        connect(url, compression=None) as client,
    ):
        for message in messages[:3]:
            await client.send(message)
        await _until_received(sink, sum(sizes[:3]))
        assert protocols[0]._partial is not None  # the in-place reader took over
        await asyncio.wait_for(await client.ping(b"still there"), 5)  # websockets answers
        for message in messages[3:]:
            await client.send(message)
        assert await _until_received(sink, sum(sizes)) == b"".join(messages)
        assert protocols[0]._partial is not None  # and took over again after the ping


async def test_a_frame_arriving_byte_by_byte_is_delivered_whole_and_a_close_still_ends():
    sink = Sink()
    protocols: list[TunnelWebSocketProtocol] = []
    async with serve(_direct_app(sink, protocols)) as url:
        reader, writer = await _stalled_client(url)
        first = Frame(Opcode.BINARY, b"first").serialize(mask=True, extensions=[])
        writer.write(first)
        await _until_received(sink, 5)
        assert protocols[0]._partial is not None
        frame = Frame(Opcode.BINARY, b"y" * 300).serialize(mask=True, extensions=[])
        for i in range(len(frame)):
            writer.write(frame[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
        assert await _until_received(sink, 305) == b"first" + b"y" * 300
        writer.write(Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=True, extensions=[]))
        await asyncio.wait_for(sink.ended.wait(), 5)
        answer = await asyncio.wait_for(reader.read(64), 5)
        assert answer[:1] == b"\x88"  # the server's close frame
        writer.close()
    assert sink.lost == [None]


async def test_a_message_over_the_size_limit_still_closes_with_1009():
    sink = Sink()
    protocols: list[TunnelWebSocketProtocol] = []
    async with (
        serve(_direct_app(sink, protocols), ws_max_size=1000) as url,
        connect(url, compression=None, max_size=None) as client,
    ):
        await client.send(b"fits")
        await _until_received(sink, 4)
        await client.send(b"x" * 1001)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
    assert sink.received == [b"fits"]
