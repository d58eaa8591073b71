"""The agent's tunnel upgrade against servers that do not answer it."""

from __future__ import annotations

import asyncio

import pytest

from visiona.agent.websocket import open_tunnel_socket


async def test_a_server_closing_the_connection_during_the_upgrade_is_a_connection_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)  # a node stopping: it reads the upgrade and closes
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionError, match="closed the connection"):
            await open_tunnel_socket(f"ws://127.0.0.1:{port}/t", "vst_x", handshake_timeout=10)
    finally:
        server.close()
        await server.wait_closed()
