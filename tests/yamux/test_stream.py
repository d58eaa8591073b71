"""The reader/writer interface of a stream, as protocol code uses it."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.yamux import PairFactory


async def test_readuntil_and_readline_parse_an_http_request(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    for piece in (b"GET /x HTTP/1.1\r\nHo", b"st: a\r\n", b"\r\nbody-bytes"):
        stream.write(piece)
        await client.ping()  # make each piece arrive separately
    stream.write_eof()
    peer = await server.accept_stream()
    assert await peer.readline() == b"GET /x HTTP/1.1\r\n"
    assert await peer.readuntil(b"\r\n\r\n") == b"Host: a\r\n\r\n"
    assert await peer.read(4) == b"body"
    assert await peer.read() == b"-bytes"
    assert await peer.readline() == b""
    assert peer.at_eof()


async def test_lines_can_be_iterated(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.writelines([b"one\n", b"two\n", b"three"])
    stream.write_eof()
    peer = await server.accept_stream()
    assert [line async for line in peer] == [b"one\n", b"two\n", b"three"]


async def test_readexactly_reports_a_short_stream(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.write(b"abc")
    stream.write_eof()
    peer = await server.accept_stream()
    with pytest.raises(asyncio.IncompleteReadError) as info:
        await peer.readexactly(10)
    assert info.value.partial == b"abc"


async def test_readuntil_reports_a_missing_separator_at_eof(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.write(b"no newline")
    stream.write_eof()
    peer = await server.accept_stream()
    with pytest.raises(asyncio.IncompleteReadError) as info:
        await peer.readuntil(b"\n")
    assert info.value.partial == b"no newline"


async def test_async_with_closes_the_stream_and_resets_on_error(make_pair: PairFactory):
    client, server = await make_pair()
    async with await client.open_stream() as stream:
        stream.write(b"done")
    peer = await server.accept_stream()
    assert await peer.read() == b"done"
    failing = await client.open_stream()
    failing.write(b"partial")
    second = await server.accept_stream()
    assert await second.readexactly(7) == b"partial"

    async def fail_inside() -> None:
        async with failing:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fail_inside()
    with pytest.raises(ConnectionResetError):
        await second.read()


async def test_stream_exposes_its_id_and_the_transport_details(make_pair: PairFactory):
    client, _ = await make_pair()
    stream = await client.open_stream()
    assert stream.get_extra_info("stream_id") == stream.stream_id == 1
    assert stream.get_extra_info("session") is client
    host, _port = stream.get_extra_info("peername")
    assert host == "127.0.0.1"
    assert stream.can_write_eof()
    assert "1" in repr(stream)
    assert "client" in repr(client)


async def test_wait_closed_returns_once_the_fin_is_sent(make_pair: PairFactory):
    client, server = await make_pair()
    stream = await client.open_stream()
    stream.write(bytes(1024 * 1024))
    stream.close()
    peer = await server.accept_stream()
    waiter = asyncio.ensure_future(stream.wait_closed())
    assert len(await peer.read()) == 1024 * 1024
    await waiter
    assert stream.is_closing()
