"""The write coalescer: what leaves together, counted in transport writes."""

from __future__ import annotations

import asyncio

from tests.support.yamux import MemoryTransport, data, frame, parse_frames, until
from visiona.yamux import Config, Session, Stream
from visiona.yamux.frames import ACK, DATA, FIN, SYN, WINDOW_UPDATE, Buffer


class CountingTransport(MemoryTransport):
    """Records each write (or vectored write) the session makes as one message."""

    def __init__(self) -> None:
        """Start with no messages."""
        super().__init__()
        self.messages: list[bytes] = []

    def write(self, data: Buffer) -> None:
        """One message."""
        self.messages.append(bytes(data))
        super().write(data)

    def writelines(self, chunks: list[Buffer]) -> None:
        """One message, like a WebSocket send of the joined buffers."""
        joined = b"".join(bytes(chunk) for chunk in chunks)
        self.messages.append(joined)
        MemoryTransport.write(self, joined)


def _kinds(message: bytes) -> list[tuple[int, int]]:
    return [(header.type, header.flags) for header, _ in parse_frames(message)]


async def _iterations(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def _accepted(transport: CountingTransport) -> tuple[Session, Stream]:
    """A server session on ``transport`` with one accepted stream whose request was read."""
    session = Session(transport, client=False, config=Config(enable_keepalive=False))
    transport.feed(frame(WINDOW_UPDATE, SYN, 1, 0) + data(1, b"request", flags=FIN))
    stream = await session.accept_stream()
    assert await stream.read() == b"request"
    return session, stream


async def test_an_accepted_streams_ack_leaves_with_its_first_answer() -> None:
    transport = CountingTransport()
    session, stream = await _accepted(transport)
    await _iterations(3)
    assert transport.messages == []  # the ACK waits for company
    stream.write(b"answer")
    stream.write_eof()
    await _iterations(3)
    assert len(transport.messages) == 1
    assert _kinds(transport.messages[0]) == [(WINDOW_UPDATE, ACK), (DATA, 0), (WINDOW_UPDATE, FIN)]
    await session.close()


async def test_a_lone_ack_leaves_after_a_short_wait() -> None:
    transport = CountingTransport()
    session, _ = await _accepted(transport)
    assert transport.messages == []  # not at once: it waits for an answer to ride with
    await until(lambda: bool(transport.messages))  # the lazy timer fires
    assert [_kinds(m) for m in transport.messages] == [[(WINDOW_UPDATE, ACK)]]
    await session.close()


async def test_data_and_an_eof_one_iteration_later_leave_in_one_write() -> None:
    transport = CountingTransport()
    session = Session(transport, client=True, config=Config(enable_keepalive=False))
    stream = await session.open_stream()
    stream.write(b"body")
    await _iterations(1)  # the local service's EOF arrives in the next read
    stream.write_eof()
    await _iterations(3)
    assert len(transport.messages) == 1
    assert _kinds(transport.messages[0]) == [(WINDOW_UPDATE, SYN), (DATA, 0), (WINDOW_UPDATE, FIN)]
    await session.close()


async def test_a_fin_answering_the_peers_fin_leaves_with_the_next_stream() -> None:
    transport = CountingTransport()
    session = Session(transport, client=True, config=Config(enable_keepalive=False))
    first = await session.open_stream()
    first.write(b"request")
    await _iterations(3)
    transport.feed(frame(WINDOW_UPDATE, ACK, 1, 0) + data(1, b"answer", flags=FIN))
    assert await first.read() == b"answer"
    first.close()  # our FIN ends the stream: it waits for company
    await _iterations(3)
    second = await session.open_stream()
    second.write(b"next")
    await _iterations(3)
    assert [_kinds(m) for m in transport.messages] == [
        [(WINDOW_UPDATE, SYN), (DATA, 0)],
        [(WINDOW_UPDATE, FIN), (WINDOW_UPDATE, SYN), (DATA, 0)],
    ]
    await session.close()
