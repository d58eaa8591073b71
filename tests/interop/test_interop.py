"""The Python session against hashicorp/yamux (Debian's Go library) over TCP and WebSocket.

Each test starts the Go peer (``go/src/yamuxpeer``) as a subprocess on 127.0.0.1 with
an ephemeral port, once as the yamux server (Python drives) and once as the client
(Go drives its scenario suite against the Python command service).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from testkit.gopeer import GoPeer, run_peer
from testkit.pyservice import CommandService, ws_client_session, ws_server
from visiona.yamux import (
    Config,
    RemoteGoAwayError,
    Session,
    StreamResetError,
    open_tcp_session,
    serve_tcp,
)

U64 = struct.Struct(">Q")
MIB = 1024 * 1024
BIG_WINDOW = Config(max_stream_window=16 * MIB)
DEFAULT = Config()
NETS = ["tcp", "ws"]


@contextlib.asynccontextmanager
async def go_service(
    binary: Path, net: str, config: Config, *args: str
) -> AsyncIterator[tuple[Session, GoPeer]]:
    """Run the Go peer as the yamux server; yield the Python client session and the peer."""
    if net == "tcp":
        async with run_peer(
            binary, "-mode", "service", "-net", "tcp", "-listen", "127.0.0.1:0", *args
        ) as peer:
            host, port = (await peer.event("listening"))["addr"].rsplit(":", 1)
            session = await open_tcp_session(host, int(port), config=config)
            try:
                yield session, peer
            finally:
                await session.close()
        return
    # Over a WebSocket the Go side dials, like the agent does.
    async with ws_server(client=True, config=config) as (port, sessions):
        url = f"ws://127.0.0.1:{port}/"
        async with run_peer(binary, "-mode", "service", "-net", "ws", "-dial", url, *args) as peer:
            async with asyncio.timeout(30):
                session = await sessions.get()
            try:
                yield session, peer
            finally:
                await session.close()


async def echo(session: Session, size: int, chunk: int = 256 * 1024) -> None:
    """Send ``size`` random bytes to the peer's echo command; check what comes back."""
    data = os.urandom(size)
    stream = await session.open_stream()
    stream.write(b"E" + U64.pack(size))

    async def send() -> None:
        view = memoryview(data)
        for offset in range(0, size, chunk):
            stream.write(view[offset : offset + chunk])
            await stream.drain()

    sender = asyncio.create_task(send())
    received = await stream.readexactly(size)
    await sender
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert await stream.read() == b""  # the peer's FIN follows the echo
    stream.close()


@pytest.mark.parametrize("config", [DEFAULT, BIG_WINDOW], ids=["window256k", "window16m"])
@pytest.mark.parametrize("net", NETS)
async def test_64mib_each_way_arrive_intact_through_go(go_peer: Path, net: str, config: Config):
    async with go_service(go_peer, net, config) as (session, _):
        await echo(session, 64 * MIB)
        assert session.num_streams == 0


@pytest.mark.parametrize("net", NETS)
async def test_credit_from_a_large_go_window_is_used(go_peer: Path, net: str):
    # Go grants 16 MiB per stream with its ACK (a window update of 16 MiB - 256 KiB).
    async with go_service(go_peer, net, BIG_WINDOW, "-window", str(16 * MIB)) as (session, _):
        stream = await session.open_stream()
        request = b"E" + U64.pack(1) + b"!"
        stream.write(request)
        assert await stream.readexactly(1) == b"!"  # Go has accepted (ACKed) the stream
        assert stream._send_window == 16 * MIB - len(request)
        stream.close()
        await echo(session, 64 * MIB, chunk=4 * MIB)


@pytest.mark.parametrize("net", NETS)
async def test_32_concurrent_streams_arrive_intact_through_go(go_peer: Path, net: str):
    async with go_service(go_peer, net, BIG_WINDOW) as (session, _):
        await asyncio.gather(*(echo(session, 512 * 1024 + 4099 * i) for i in range(32)))
        assert session.num_streams == 0
        assert session.stats().streams_opened == 32


@pytest.mark.parametrize("net", NETS)
async def test_go_replies_after_python_half_closes(go_peer: Path, net: str):
    async with go_service(go_peer, net, BIG_WINDOW) as (session, _):
        data = os.urandom(3 * MIB + 17)
        stream = await session.open_stream()
        stream.write(b"S")
        stream.write(data)
        stream.write_eof()
        reply = await stream.read()
        assert reply == hashlib.sha256(data).digest() + U64.pack(len(data))
        assert stream.at_eof()


@pytest.mark.parametrize("net", NETS)
async def test_python_keeps_sending_after_go_half_closes(go_peer: Path, net: str):
    async with go_service(go_peer, net, DEFAULT) as (session, peer):
        upload = os.urandom(MIB)
        stream = await session.open_stream()
        header = U64.pack(2 * MIB) + U64.pack(len(upload)) + hashlib.sha256(upload).digest()
        stream.write(b"R" + header)
        reply = await stream.read()  # until Go's FIN
        assert len(reply) == 32 + 2 * MIB
        assert hashlib.sha256(reply[32:]).digest() == reply[:32]
        stream.write(upload)
        await stream.drain()
        stream.write_eof()
        event = await peer.event("halfclose")
        assert event["ok"], event
        assert event["bytes"] == len(upload)


@pytest.mark.parametrize("net", NETS)
async def test_pings_are_answered_both_ways_with_go(go_peer: Path, net: str):
    async with go_service(go_peer, net, DEFAULT) as (session, peer):
        assert await session.ping() > 0
        stream = await session.open_stream()
        stream.write(b"P")
        assert await stream.read() == b"ok"
        assert (await peer.event("ping"))["ok"]


@pytest.mark.parametrize("net", NETS)
async def test_go_sees_a_reset_from_python(go_peer: Path, net: str):
    async with go_service(go_peer, net, DEFAULT) as (session, peer):
        stream = await session.open_stream()
        stream.write(b"W" + b"x" * 1000)
        assert await stream.readexactly(1) == b"w"  # Go is reading now
        stream.reset()
        event = await peer.event("reset")
        assert event["reset"], event
        with pytest.raises(StreamResetError):
            await stream.read()
        assert session.num_streams == 0


async def test_go_resets_a_stream_beyond_its_accept_backlog(go_peer: Path):
    async with go_service(go_peer, "tcp", DEFAULT, "-noaccept", "-backlog", "2") as (session, _):
        first, second, third = [await session.open_stream() for _ in range(3)]
        for stream in (first, second, third):
            stream.write(b"hello")
        with pytest.raises(StreamResetError):
            await third.read()
        # RSTs arrive in order: the two queued streams were not refused.
        assert not first.is_closing()
        assert not second.is_closing()
        assert session.num_streams == 2


@pytest.mark.parametrize("net", NETS)
async def test_go_away_from_go_refuses_new_streams_but_keeps_the_session(go_peer: Path, net: str):
    async with go_service(go_peer, net, DEFAULT) as (session, peer):
        stream = await session.open_stream()
        stream.write(b"A")
        assert await stream.read() == b"ok"
        assert (await peer.event("goaway"))["ok"]
        with pytest.raises(RemoteGoAwayError):
            await session.open_stream()
        assert await session.ping() > 0
        assert not session.is_closed


@pytest.mark.parametrize("net", NETS)
async def test_closing_the_python_session_ends_the_go_session(go_peer: Path, net: str):
    async with go_service(go_peer, net, DEFAULT) as (session, peer):
        await echo(session, 100_000)
        await session.close()
        await peer.event("closed")
        assert await peer.wait() == 0
        assert session.close_reason is None


@contextlib.asynccontextmanager
async def go_suite(
    binary: Path, net: str, config: Config
) -> AsyncIterator[tuple[asyncio.Queue[CommandService], GoPeer]]:
    """Run the Go peer as the yamux client against the Python command service."""
    services: asyncio.Queue[CommandService] = asyncio.Queue()
    if net == "tcp":
        server = await serve_tcp(
            lambda session: services.put_nowait(CommandService(session)),
            "127.0.0.1",
            0,
            config=config,
        )
        port = server.sockets[0].getsockname()[1]
        try:
            async with run_peer(
                binary, "-mode", "suite", "-net", "tcp", "-dial", f"127.0.0.1:{port}"
            ) as peer:
                yield services, peer
        finally:
            server.close()
        return
    # Over a WebSocket the Go side (the yamux client, like the cloud) listens.
    async with run_peer(binary, "-mode", "suite", "-net", "ws", "-listen", "127.0.0.1:0") as peer:
        addr = (await peer.event("listening"))["addr"]
        async with ws_client_session(f"ws://{addr}/", client=False, config=config) as session:
            services.put_nowait(CommandService(session))
            yield services, peer


@pytest.mark.parametrize("config", [DEFAULT, BIG_WINDOW], ids=["window256k", "window16m"])
@pytest.mark.parametrize("net", NETS)
async def test_go_client_suite_passes_against_the_python_server(
    go_peer: Path, net: str, config: Config
):
    async with go_suite(go_peer, net, config) as (services, peer):
        names = [
            "ping",
            "echo_bulk",
            "concurrent_32",
            "halfclose_by_python",
            "reset_by_python",
            "ping_from_python",
            "goaway_from_python",
        ]
        for name in names:
            result = await peer.event("result")
            assert result["name"] == name
            assert result["ok"], result
        await peer.event("suite_done")
        assert await peer.wait() == 0
        service = services.get_nowait()
        await asyncio.wait_for(service.session.closed.wait(), 30)
        assert service.outcomes["halfclose"] is True
        assert service.outcomes["reset_sent"] is True
        assert service.outcomes["goaway_sent"] is True
        assert service.outcomes["ping_rtt"] > 0
        assert "error" not in service.outcomes
        assert service.session.num_streams == 0
        await service.aclose()
