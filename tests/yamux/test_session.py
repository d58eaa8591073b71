"""Session behaviour between two Python sessions over loopback TCP."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tests.support.yamux import (
    MemoryTransport,
    PairFactory,
    RawFactory,
    data,
    frame,
    read_frame,
    read_until,
)
from visiona.yamux import (
    Config,
    KeepAliveTimeoutError,
    OpenTimeoutError,
    RemoteGoAwayError,
    Session,
    SessionClosedError,
    StreamResetError,
)
from visiona.yamux.frames import ACK, DATA, FIN, GO_AWAY, PING, RST, SYN, WINDOW_UPDATE, GoAwayCode


async def test_client_opens_odd_ids_and_server_even_ids(make_pair: PairFactory):
    client, server = await make_pair()
    ids = [(await client.open_stream()).stream_id for _ in range(3)]
    assert ids == [1, 3, 5]
    assert (await server.open_stream()).stream_id == 2
    accepted = [(await server.accept_stream()).stream_id for _ in range(3)]
    assert accepted == [1, 3, 5]
    assert (await client.accept_stream()).stream_id == 2


async def test_bytes_written_on_one_side_are_read_on_the_other(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.write(b"hello ")
    stream.write(memoryview(b"world"))
    await stream.drain()
    peer = await server.accept_stream()
    assert await peer.readexactly(11) == b"hello world"
    peer.write(b"back")
    assert await stream.read(100) == b"back"


async def test_write_eof_half_closes_while_the_other_direction_goes_on(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.write(b"request")
    stream.write_eof()
    peer = await server.accept_stream()
    assert await peer.read() == b"request"
    assert peer.at_eof()
    body = os.urandom(1_000_000)
    peer.write(body)  # more than the window: the FIN waits behind the data
    peer.write_eof()
    assert await stream.read() == body
    assert client.num_streams == 0
    assert server.num_streams == 0


async def test_writing_after_write_eof_is_refused(make_pair: PairFactory):
    client, _ = await make_pair()
    stream = await client.open_stream()
    stream.write_eof()
    with pytest.raises(BrokenPipeError):
        stream.write(b"late")


async def test_reset_reaches_the_peer_as_stream_reset_error(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.write(b"x")
    peer = await server.accept_stream()
    assert await peer.read(1) == b"x"
    stream.reset()
    with pytest.raises(StreamResetError):
        await peer.read()
    with pytest.raises(ConnectionResetError):
        peer.write(b"y")
    with pytest.raises(StreamResetError):
        await stream.read()
    assert client.num_streams == 0
    assert server.num_streams == 0


async def test_ping_returns_a_round_trip_time(make_pair: PairFactory):
    client, server = await make_pair()
    assert await client.ping() > 0
    assert await server.ping() > 0


async def test_go_away_refuses_new_streams_but_keeps_existing_ones(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.write(b"before")
    peer = await server.accept_stream()
    await server.go_away()
    assert await peer.readexactly(6) == b"before"
    await client.ping()  # the GoAway has arrived once the pong has
    with pytest.raises(RemoteGoAwayError) as info:
        await client.open_stream()
    assert info.value.code == GoAwayCode.NORMAL
    stream.write(b"after")
    assert await peer.readexactly(5) == b"after"


async def test_syn_after_local_go_away_is_reset(make_raw: RawFactory):
    session, reader, writer = await make_raw()
    await session.go_away()
    assert (await read_frame(reader))[0].type == GO_AWAY
    writer.write(frame(WINDOW_UPDATE, SYN, 1, 0))
    header, _ = await read_frame(reader)
    assert (header.type, header.flags, header.stream_id) == (WINDOW_UPDATE, RST, 1)
    assert not session.is_closed


async def test_refuse_streams_resets_every_peer_open_at_once_and_keeps_nothing(
    make_raw: RawFactory,
):
    session, reader, writer = await make_raw(Config(refuse_streams=True), client=True)
    payload = b"x" * 200 * 1024
    for stream_id in (2, 4, 6):  # data with the SYN, then more data in flight
        writer.write(data(stream_id, payload, SYN) + data(stream_id, payload))
    writer.write(frame(PING, SYN, 0, 7))
    for stream_id in (2, 4, 6):
        header, _ = await read_frame(reader)
        assert (header.type, header.flags, header.stream_id) == (WINDOW_UPDATE, RST, stream_id)
    header, _ = await read_frame(reader)  # the pong: every frame above has been handled
    assert (header.type, header.flags, header.length) == (PING, ACK, 7)
    assert session.num_streams == 0
    assert session.stats().streams_refused == 3
    assert not session.is_closed
    # Our own opens still work.
    stream = await session.open_stream()
    assert stream.stream_id == 1


async def test_stream_beyond_the_accept_backlog_is_reset(make_pair: PairFactory):
    client, server = await make_pair(server_config=Config(accept_backlog=2))
    streams = [await client.open_stream() for _ in range(3)]
    for stream in streams:
        stream.write(b"x")
    with pytest.raises(StreamResetError):
        await streams[2].read()
    assert [(await server.accept_stream()).stream_id for _ in range(2)] == [1, 3]


async def test_unacknowledged_open_is_reset_after_the_open_timeout(make_raw: RawFactory):
    session, reader, _ = await make_raw(Config(open_timeout=0.05), client=True)
    stream = await session.open_stream()
    header, _ = await read_frame(reader)
    assert (header.type, header.flags) == (WINDOW_UPDATE, SYN)
    with pytest.raises(OpenTimeoutError):
        await stream.read()
    header, _ = await read_frame(reader)
    assert (header.flags, header.stream_id) == (RST, stream.stream_id)
    assert session.num_streams == 0


async def test_opens_wait_for_acks_beyond_the_backlog(make_raw: RawFactory):
    session, reader, writer = await make_raw(Config(accept_backlog=1, open_timeout=5), client=True)
    first = await session.open_stream()
    second = asyncio.ensure_future(session.open_stream())
    await asyncio.sleep(0)
    assert not second.done()
    await read_frame(reader)
    writer.write(frame(WINDOW_UPDATE, ACK, first.stream_id, 0))
    assert (await second).stream_id == 3


async def test_unanswered_keepalive_ends_the_session(make_raw: RawFactory):
    session, reader, _ = await make_raw(Config(keepalive_interval=0.02, keepalive_timeout=0.05))
    header, _ = await read_until(reader, PING)
    assert header.flags == SYN
    await session.closed.wait()
    assert isinstance(session.close_reason, KeepAliveTimeoutError)


async def test_peer_ping_is_answered_with_the_same_opaque_value(make_raw: RawFactory):
    session, reader, writer = await make_raw()
    writer.write(frame(PING, SYN, 0, 0xDEADBEEF))
    header, _ = await read_until(reader, PING)
    assert (header.flags, header.length) == (ACK, 0xDEADBEEF)
    assert not session.is_closed


async def test_close_sends_go_away_and_fails_open_streams(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.write(b"x")
    peer = await server.accept_stream()
    # read before the GoAway can arrive: data without a FIN is dropped when it does
    assert await peer.read(1) == b"x"
    await client.close()
    assert client.is_closed
    assert client.close_reason is None
    with pytest.raises(SessionClosedError):
        await stream.read()
    with pytest.raises(SessionClosedError):
        await client.open_stream()
    with pytest.raises(SessionClosedError):
        await peer.read()
    await server.closed.wait()
    assert isinstance(server.close_reason, SessionClosedError)


async def test_async_with_closes_the_session(make_pair: PairFactory):
    client, _ = await make_pair()
    async with client as session:
        await session.ping()
    assert client.is_closed


async def test_data_complete_before_the_session_ends_stays_readable(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    peer_task = asyncio.ensure_future(server.accept_stream())
    stream.write(b"x")
    peer = await peer_task
    peer.write(b"final answer")
    peer.write_eof()
    await client.ping()  # everything before the pong has arrived
    await server.close()
    await client.closed.wait()
    assert await stream.read() == b"final answer"
    with pytest.raises(SessionClosedError):
        stream.write(b"too late")


async def test_accept_stream_fails_once_the_session_closes(make_pair: PairFactory):
    client, server = await make_pair()
    waiting = asyncio.ensure_future(server.accept_stream())
    await asyncio.sleep(0)
    await client.close()
    with pytest.raises(SessionClosedError):
        await waiting


async def test_counters_follow_the_traffic(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.write(b"a" * 1000)
    stream.write_eof()
    peer = await server.accept_stream()
    assert await peer.read() == b"a" * 1000
    stats = client.stats()
    assert stats.streams_opened == 1
    assert stats.frames_sent >= 3
    assert stats.bytes_sent >= 1000 + 3 * 12
    assert server.stats().streams_accepted == 1
    assert server.bytes_received == stats.bytes_sent
    assert server.stats().open_streams == 1  # our side has not closed yet
    peer.close()
    assert server.num_streams == 0


async def test_many_streams_carry_their_own_bytes(make_pair: PairFactory):
    config = Config(max_stream_window=1024 * 1024)
    client, server = await make_pair(config, config)

    replies: set[asyncio.Task[None]] = set()

    async def serve() -> None:
        while True:
            peer = await server.accept_stream()
            task = asyncio.ensure_future(reply(peer))
            replies.add(task)
            task.add_done_callback(replies.discard)

    async def reply(peer) -> None:
        body = await peer.read()
        peer.write(hashlib.sha256(body).digest())
        peer.write_eof()

    async def one(size: int) -> None:
        body = os.urandom(size)
        stream = await client.open_stream()
        stream.write(body)
        stream.write_eof()
        assert await stream.read() == hashlib.sha256(body).digest()

    server_task = asyncio.ensure_future(serve())
    await asyncio.gather(*(one(10_000 * i + 1) for i in range(50)))
    server_task.cancel()
    assert client.num_streams == 0


async def test_a_cancelled_acceptor_does_not_swallow_a_stream():
    transport = MemoryTransport()
    server = Session(transport, client=False, config=Config(enable_keepalive=False))
    first = asyncio.ensure_future(server.accept_stream())
    second = asyncio.ensure_future(server.accept_stream())
    await asyncio.sleep(0)
    transport.feed(frame(WINDOW_UPDATE, SYN, 1, 0))  # wakes the first acceptor...
    first.cancel()  # ...which is cancelled before it runs
    peer = await second
    assert peer.stream_id == 1
    assert first.cancelled()
    await server.close()


async def test_flags_on_data_frames_open_end_and_reset_streams(make_raw: RawFactory):
    session, reader, writer = await make_raw()
    writer.write(data(1, b"hello", SYN | FIN))  # open, send and half-close in one frame
    stream = await session.accept_stream()
    assert await stream.read() == b"hello"
    assert stream.at_eof()
    writer.write(data(3, b"doomed", SYN))
    doomed = await session.accept_stream()
    assert await doomed.read(100) == b"doomed"
    writer.write(data(3, b"", RST))
    with pytest.raises(StreamResetError):
        await doomed.read(100)
    stream.write(b"reply")
    stream.write_eof()
    header, payload = await read_until(reader, DATA)
    assert (header.stream_id, payload) == (1, b"reply")
    assert not session.is_closed


async def test_keep_alive_with_a_policy_counts_misses_and_answers(
    make_pair: PairFactory, make_raw: RawFactory
):
    client, _server = await make_pair()
    answered = asyncio.Event()
    client.keep_alive(0.01, 1.0, on_miss=lambda _misses: True, on_answer=answered.set)
    async with asyncio.timeout(10):
        await answered.wait()
    # A peer that never answers: two misses, then the policy stops; the session stays up.
    session, reader, _ = await make_raw(client=True)
    misses: list[int] = []
    stopped = asyncio.Event()

    def on_miss(count: int) -> bool:
        misses.append(count)
        if count == 2:
            stopped.set()
        return count < 2

    session.keep_alive(0.01, 0.01, on_miss=on_miss)
    async with asyncio.timeout(10):
        await stopped.wait()
    pings = [await read_frame(reader) for _ in range(2)]
    assert [(h.type, h.flags) for h, _ in pings] == [(PING, SYN), (PING, SYN)]
    assert misses == [1, 2]
    assert not session.is_closed
    # Disarmed as the policy said stop: no timer is left that could count a third miss.
    assert not session._pings.keepalive_armed


async def test_no_window_update_follows_our_fin_after_close(make_raw: RawFactory):
    """The proxy's pattern: read an answer, then close() before the peer's FIN arrived.

    hashicorp/yamux forgets a stream once both FINs crossed; any frame after ours (a
    window update for what was read) is then "frame for missing stream" there.
    """
    session, reader, writer = await make_raw()
    writer.write(frame(WINDOW_UPDATE, SYN, 1, 0) + data(1, b"answer" * 1000))
    await writer.drain()
    stream = await session.accept_stream()
    assert await stream.readexactly(6000) == b"answer" * 1000
    stream.close()
    pinging = asyncio.ensure_future(session.ping())  # sent after everything close() sent
    seen = []
    async with asyncio.timeout(10):
        while True:
            header, _ = await read_frame(reader)
            if header.type == PING:
                break
            seen.append((header.type, header.flags & (FIN | RST), header.length))
    pinging.cancel()
    await asyncio.gather(pinging, return_exceptions=True)
    fin = seen.index((WINDOW_UPDATE, FIN, 0))
    assert seen[fin + 1 :] == []
    assert [s for s in seen if s[0] == WINDOW_UPDATE and s[2] > 0] == []


async def test_a_peer_blocked_on_its_window_gets_credit_after_close(make_raw: RawFactory):
    """After close() the peer may still be sending (its data is dropped): when its window
    is used up it gets credit, so it can finish instead of hanging."""
    session, reader, writer = await make_raw()
    window = 256 * 1024
    writer.write(frame(WINDOW_UPDATE, SYN, 1, 0) + data(1, b"x" * 1000))
    await writer.drain()
    stream = await session.accept_stream()
    stream.close()
    writer.write(data(1, b"y" * (window - 1000)))  # the rest of the initial window
    await writer.drain()
    header, _ = await read_until(reader, WINDOW_UPDATE)
    while header.length == 0:  # the ACK and our FIN carry no credit
        header, _ = await read_until(reader, WINDOW_UPDATE)
    assert (header.stream_id, header.flags) == (1, 0)
    assert header.length > 0
