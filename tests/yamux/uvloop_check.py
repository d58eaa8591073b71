"""Run a few sessions on uvloop (the loop the bench and the services use); exit 0 if intact.

Started as a subprocess by ``test_uvloop.py`` so the test session's own loop is untouched.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import uvloop

from testkit.pyservice import ws_client_session, ws_server
from visiona.yamux import Config, Session, open_tcp_session, serve_tcp

MIB = 1024 * 1024


async def exchange(opener: Session, acceptor: Session, size: int) -> None:
    """Send ``size`` bytes in several writes; the acceptor answers their sha256."""
    body = os.urandom(size)

    async def answer() -> None:
        peer = await acceptor.accept_stream()
        received = await peer.read()
        peer.write(hashlib.sha256(received).digest())
        peer.write_eof()

    answering = asyncio.ensure_future(answer())
    stream = await opener.open_stream()
    for offset in range(0, size, 300_000):
        stream.write(body[offset : offset + 300_000])
        await stream.drain()
    stream.write_eof()
    await answering
    if await stream.read() != hashlib.sha256(body).digest():
        raise SystemExit("corrupted")


async def main() -> None:
    """TCP and WebSocket, 256 KiB and 16 MiB windows, several streams at once."""
    for window in (256 * 1024, 16 * MIB):
        config = Config(max_stream_window=window)
        accepted: asyncio.Queue[Session] = asyncio.Queue()
        server = await serve_tcp(accepted.put_nowait, "127.0.0.1", 0, config=config)
        port = server.sockets[0].getsockname()[1]
        client = await open_tcp_session("127.0.0.1", port, config=config)
        other = await accepted.get()
        await asyncio.gather(*(exchange(client, other, 5 * MIB + i) for i in range(8)))
        await exchange(other, client, 5 * MIB)
        await client.close()
        server.close()
        async with ws_server(client=False, config=config) as (ws_port, sessions):
            url = f"ws://127.0.0.1:{ws_port}/"
            async with ws_client_session(url, client=True, config=config) as ws_client:
                ws_other = await sessions.get()
                await asyncio.gather(*(exchange(ws_client, ws_other, 3 * MIB) for _ in range(4)))
    print("ok")  # noqa: T201 - the test reads this line


if __name__ == "__main__":
    uvloop.run(main())
