"""The session over a message channel whose send is a plain call (MessageTransport)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tests.support.yamux import until
from visiona.yamux import Config, MessageTransport, Session, SessionClosedError
from visiona.yamux.frames import Buffer

MIB = 1024 * 1024


def message_pair(
    max_message: int = 100_000,
) -> tuple[MessageTransport, MessageTransport, list[int]]:
    """Two message transports back to back; the sizes of the messages left→right."""
    left: MessageTransport
    right: MessageTransport
    sizes: list[int] = []
    loop = asyncio.get_running_loop()

    def to_right(message: Buffer) -> None:
        data = bytes(message)
        sizes.append(len(data))
        loop.call_soon(right.feed_data, data)  # delivered later, like a socket

    def to_left(message: Buffer) -> None:
        loop.call_soon(left.feed_data, bytes(message))

    def close_left() -> None:
        loop.call_soon(right.connection_lost, None)
        loop.call_soon(left.connection_lost, None)

    def close_right() -> None:
        loop.call_soon(left.connection_lost, None)
        loop.call_soon(right.connection_lost, None)

    left = MessageTransport(to_right, close_left, max_message=max_message)
    right = MessageTransport(to_left, close_right, max_message=max_message)
    return left, right, sizes


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


async def test_session_runs_over_messages_sent_at_once():
    left, right, sizes = message_pair()
    client = Session(left, client=True, config=Config(max_stream_window=4 * MIB))
    server = Session(right, client=False, config=Config(max_stream_window=4 * MIB))
    await asyncio.gather(*(exchange(client, server, MIB + i) for i in range(4)))
    assert await client.ping() > 0
    assert max(sizes) <= 100_000  # large writes were cut at max_message
    await client.close()
    await server.closed.wait()
    assert isinstance(server.close_reason, SessionClosedError)


async def test_a_session_write_leaves_in_the_same_callback_as_its_flush():
    sent: list[bytes] = []
    transport = MessageTransport(lambda message: sent.append(bytes(message)))
    session = Session(transport, client=True, config=Config(enable_keepalive=False))
    await session.open_stream()
    session._writer.flush()  # what the loop would run one iteration later
    assert sent, "no task in between: the SYN left during the flush"
    session.abort()


async def test_writelines_joins_chunks_up_to_max_message():
    sent: list[bytes] = []
    transport = MessageTransport(lambda message: sent.append(bytes(message)), max_message=10)
    transport.writelines([b"abc", b"def", b"ghij", b"k", b"x" * 25, b"yz"])
    assert sent == [b"abcdefghij", b"k", b"x" * 10, b"x" * 10, b"x" * 5, b"yz"]


async def test_a_failed_send_ends_the_session():
    def broken(_message: object) -> None:
        raise ConnectionResetError("gone")

    transport = MessageTransport(broken)
    session = Session(transport, client=True, config=Config(enable_keepalive=False))
    with pytest.raises(SessionClosedError):
        await session.ping()
    await asyncio.wait_for(session.closed.wait(), 5)
    assert isinstance(session.close_reason, SessionClosedError)


async def test_owner_back_pressure_holds_the_streams():
    sent: list[bytes] = []
    transport = MessageTransport(lambda message: sent.append(bytes(message)))
    session = Session(transport, client=True, config=Config(enable_keepalive=False))
    stream = await session.open_stream()
    transport.pause_writing()
    assert transport.write_paused
    drained = asyncio.ensure_future(stream.drain())
    await asyncio.sleep(0.01)
    assert not drained.done()
    transport.resume_writing()
    await asyncio.wait_for(drained, 5)
    session.abort()


async def test_close_asks_the_owner_once_and_waits_for_its_end():
    closes: list[str] = []
    transport = MessageTransport(lambda _message: None, lambda: closes.append("close"))
    session = Session(transport, client=True, config=Config(enable_keepalive=False))
    closing = asyncio.ensure_future(session.close())
    await until(lambda: bool(closes))
    assert closes == ["close"]
    assert not closing.done()  # the channel has not reported its end yet
    transport.connection_lost(None)
    await asyncio.wait_for(closing, 5)
    transport.close()
    assert closes == ["close"]


async def test_abort_drops_the_channel_and_ends_the_session():
    calls: list[str] = []
    transport = MessageTransport(
        lambda _message: None, lambda: calls.append("close"), abort=lambda: calls.append("abort")
    )
    session = Session(transport, client=True, config=Config(enable_keepalive=False))
    transport.abort()
    await asyncio.wait_for(session.closed.wait(), 5)
    assert calls == ["abort"]
