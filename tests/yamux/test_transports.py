"""The session over the other transports: a stream pair, fed bytes, a WebSocket."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import pytest

from testkit.pyservice import ws_client_session, ws_server
from visiona.yamux import (
    Config,
    FeedTransport,
    Session,
    SessionClosedError,
    StreamPairTransport,
)

MIB = 1024 * 1024


async def exchange(opener: Session, acceptor: Session, size: int) -> None:
    """Send ``size`` bytes one way and their sha256 back."""
    body = os.urandom(size)
    stream = await opener.open_stream()
    stream.write(body)
    stream.write_eof()
    peer = await acceptor.accept_stream()
    received = await peer.read()
    peer.write(hashlib.sha256(received).digest())
    peer.write_eof()
    assert await stream.read() == hashlib.sha256(body).digest()


@pytest.fixture
async def stream_pair_sessions() -> AsyncIterator[tuple[Session, Session]]:
    """Two sessions over asyncio stream pairs on loopback TCP."""
    accepted: asyncio.Queue[Session] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(Session(StreamPairTransport(reader, writer), client=False))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Session(StreamPairTransport(reader, writer), client=True)
    other = await accepted.get()
    yield client, other
    await client.close()
    await other.close()
    server.close()
    await server.wait_closed()


async def test_session_runs_over_a_stream_pair(stream_pair_sessions: tuple[Session, Session]):
    client, server = stream_pair_sessions
    await exchange(client, server, 3 * MIB)
    await exchange(server, client, 3 * MIB)
    await client.close()
    await server.closed.wait()


def feed_pair() -> tuple[FeedTransport, FeedTransport]:
    """Two feed transports wired back to back, as two ends of a message channel."""
    left: FeedTransport
    right: FeedTransport

    async def to_right(chunk: bytes) -> None:
        await asyncio.sleep(0)
        right.feed_data(chunk)

    async def to_left(chunk: bytes) -> None:
        await asyncio.sleep(0)
        left.feed_data(chunk)

    def close_left() -> None:
        right.connection_lost(None)

    def close_right() -> None:
        left.connection_lost(None)

    left = FeedTransport(to_right, close_left, max_message=100_000)
    right = FeedTransport(to_left, close_right, max_message=100_000)
    return left, right


async def test_session_runs_over_fed_messages():
    left, right = feed_pair()
    client = Session(left, client=True, config=Config(max_stream_window=4 * MIB))
    server = Session(right, client=False, config=Config(max_stream_window=4 * MIB))
    await asyncio.gather(*(exchange(client, server, MIB + i) for i in range(4)))
    assert await client.ping() > 0
    await client.close()
    await server.closed.wait()
    assert isinstance(server.close_reason, SessionClosedError)


async def test_lost_feed_transport_ends_the_session():
    left, right = feed_pair()
    client = Session(left, client=True)
    Session(right, client=False)
    stream = await client.open_stream()
    left.connection_lost(ConnectionResetError("gone"))
    await client.closed.wait()
    with pytest.raises(SessionClosedError):
        await stream.read()
    assert client.num_streams == 0


async def test_python_sessions_talk_over_a_websocket():
    config = Config(max_stream_window=4 * MIB)
    async with ws_server(client=False, config=config) as (port, sessions):
        url = f"ws://127.0.0.1:{port}/"
        async with ws_client_session(url, client=True, config=config) as client:
            server = await sessions.get()
            await exchange(client, server, 8 * MIB)
            await exchange(server, client, 8 * MIB)


async def test_a_peer_that_stops_reading_does_not_keep_the_session_alive():
    stuck = asyncio.Event()

    async def never_sent(chunk: bytes) -> None:
        await stuck.wait()  # the far end stopped reading

    transport = FeedTransport(never_sent)
    session = Session(transport, client=True, config=Config(close_timeout=0.05))
    stream = await session.open_stream()
    stream.write(b"x" * 1000)
    await session.close()  # gives up flushing after close_timeout
    assert session.is_closed
    assert transport._writer_task is not None
    await asyncio.wait_for(transport._writer_task, 10)
    assert transport._writer_task.done()


async def test_fed_transport_task_ends_with_its_session():
    left, right = feed_pair()
    client = Session(left, client=True)
    server = Session(right, client=False)
    await client.ping()
    await client.close()
    await server.closed.wait()
    await server.wait_closed()
    for transport in (left, right):
        assert transport._writer_task is not None
        await asyncio.wait_for(transport._writer_task, 10)


async def test_feed_transport_pauses_the_session_until_its_sends_complete():
    gate = asyncio.Event()
    sent: list[bytes] = []

    async def slow_send(chunk: bytes) -> None:
        await gate.wait()
        sent.append(chunk)

    transport = FeedTransport(slow_send, write_high=100_000, max_message=50_000)
    session = Session(transport, client=True, config=Config(max_stream_window=4 * MIB))
    stream = await session.open_stream()
    stream.write(os.urandom(200_000))  # within the initial 256 KiB credit
    for _ in range(2):  # the writer flushes two loop iterations later
        await asyncio.sleep(0)
    assert transport.write_paused
    drained = asyncio.ensure_future(transport.drain())
    stream_drained = asyncio.ensure_future(stream.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    assert not stream_drained.done()
    gate.set()
    await drained
    await stream_drained
    assert not transport.write_paused
    assert sum(map(len, sent)) >= 200_000
    await session.close()
