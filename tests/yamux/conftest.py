"""Fixtures of the yamux tests: sessions over real loopback TCP (127.0.0.1, port 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.yamux import PairFactory, RawFactory
from visiona.yamux import Config, Session, open_tcp_session, serve_tcp


@pytest.fixture
async def make_pair() -> AsyncIterator[PairFactory]:
    """Build (client, server) sessions connected over loopback TCP; closed afterwards."""
    servers: list[asyncio.Server] = []
    sessions: list[Session] = []

    async def make(
        client_config: Config | None = None, server_config: Config | None = None
    ) -> tuple[Session, Session]:
        accepted: asyncio.Queue[Session] = asyncio.Queue()
        server = await serve_tcp(accepted.put_nowait, "127.0.0.1", 0, config=server_config)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        client = await open_tcp_session("127.0.0.1", port, config=client_config)
        async with asyncio.timeout(10):
            server_session = await accepted.get()
        sessions.extend([client, server_session])
        return client, server_session

    yield make
    for session in sessions:
        await session.close()
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def make_raw() -> AsyncIterator[RawFactory]:
    """A Python session (server side by default) facing a raw socket the test writes frames to."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []
    sessions: list[Session] = []

    async def make(
        config: Config | None = None, *, client: bool = False
    ) -> tuple[Session, asyncio.StreamReader, asyncio.StreamWriter]:
        accepted: asyncio.Queue[Session] = asyncio.Queue()
        server = await serve_tcp(accepted.put_nowait, "127.0.0.1", 0, client=client, config=config)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        async with asyncio.timeout(10):
            session = await accepted.get()
        sessions.append(session)
        return session, reader, writer

    yield make
    for session in sessions:
        await session.close()
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()
