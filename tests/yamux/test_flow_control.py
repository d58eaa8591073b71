"""Per-stream credit: what we send, what we grant, what drain() waits for."""

from __future__ import annotations

import asyncio
import os

from tests.support.yamux import PairFactory, RawFactory, data, frame, read_frame
from visiona.yamux import Config
from visiona.yamux.frames import ACK, DATA, PING, SYN, WINDOW_UPDATE

KIB = 1024
MIB = 1024 * KIB


async def data_until_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Ping, then count Data bytes that arrive before the pong (sent before it, in order)."""
    writer.write(frame(PING, SYN, 0, 99))
    total = 0
    async with asyncio.timeout(10):
        while True:
            header, payload = await read_frame(reader)
            if header.type == PING and header.flags == ACK:
                return total
            if header.type == DATA:
                total += len(payload)


async def test_sender_never_exceeds_the_peers_window(make_raw: RawFactory):
    session, reader, writer = await make_raw(client=True)
    stream = await session.open_stream()
    stream.write(os.urandom(MIB))
    assert await data_until_pong(reader, writer) == 256 * KIB
    writer.write(frame(WINDOW_UPDATE, ACK, stream.stream_id, 100 * KIB))
    assert await data_until_pong(reader, writer) == 100 * KIB
    assert await data_until_pong(reader, writer) == 0


async def test_a_larger_receive_window_is_advertised_on_open(make_raw: RawFactory):
    session, reader, _ = await make_raw(Config(max_stream_window=16 * MIB), client=True)
    stream = await session.open_stream()
    header, _ = await read_frame(reader)
    assert (header.type, header.flags, header.stream_id) == (WINDOW_UPDATE, SYN, stream.stream_id)
    assert header.length == 16 * MIB - 256 * KIB


async def test_credit_goes_back_once_half_the_window_is_read(make_raw: RawFactory):
    session, reader, writer = await make_raw()
    writer.write(frame(WINDOW_UPDATE, SYN, 1, 0) + data(1, bytes(256 * KIB)))
    stream = await session.accept_stream()
    header, _ = await read_frame(reader)
    assert (header.type, header.flags, header.length) == (WINDOW_UPDATE, ACK, 0)
    await stream.readexactly(100 * KIB)  # below half: no update yet
    await stream.readexactly(28 * KIB)
    header, _ = await read_frame(reader)
    assert (header.type, header.flags, header.length) == (WINDOW_UPDATE, 0, 128 * KIB)


async def test_drain_waits_until_the_peer_reads(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    body = os.urandom(2 * MIB)
    stream.write(body)
    drained = asyncio.ensure_future(stream.drain())
    peer = await server.accept_stream()
    await client.ping()
    assert not drained.done()  # 2 MiB cannot fit in a 256 KiB window
    assert await peer.readexactly(len(body)) == body
    await drained


async def test_closed_stream_drops_incoming_data_but_keeps_the_sender_flowing(
    make_pair: PairFactory,
):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.write(b"x")
    peer = await server.accept_stream()
    peer.close()
    stream.write(os.urandom(3 * MIB))  # far beyond one window
    await stream.drain()
    stream.write_eof()
    assert await stream.read() == b""
    await stream.wait_closed()  # the last bytes and our FIN have left (credit permitting)
    await client.ping()  # our FIN has reached the server once the pong is back
    assert client.num_streams == 0
    assert server.num_streams == 0


async def test_many_small_writes_are_coalesced_and_arrive_in_order(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    for i in range(5000):
        stream.write(b"%05d" % i)
    stream.write_eof()
    peer = await server.accept_stream()
    assert await peer.read() == b"".join(b"%05d" % i for i in range(5000))
    assert client.stats().frames_sent >= 5000
