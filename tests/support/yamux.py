"""Support of the yamux tests: factory types, raw frames, a memory transport, loop errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from visiona.yamux import ByteTransport, Session
from visiona.yamux.frames import HEADER, HEADER_SIZE, Header, decode_header

#: The ``make_pair`` fixture: (client, server) sessions over loopback TCP.
PairFactory = Callable[..., Awaitable[tuple[Session, Session]]]
#: The ``make_raw`` fixture: a session and the raw socket of its peer.
RawFactory = Callable[..., Awaitable[tuple[Session, asyncio.StreamReader, asyncio.StreamWriter]]]


async def until(predicate: Callable[[], bool], *, limit: float = 5.0) -> None:
    """Wait (bounded by ``limit`` seconds) until ``predicate()`` holds."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - polls state that offers no event
            await asyncio.sleep(0.001)


def frame(kind: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    """Encode one raw frame (header + payload), version 0."""
    return HEADER.pack(0, kind, flags, stream_id, length) + payload


def data(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    """Encode a Data frame."""
    return frame(0, flags, stream_id, len(payload), payload)


def parse_frames(raw: bytes) -> list[tuple[Header, bytes]]:
    """Split ``raw`` into (header, payload) pairs; a trailing partial frame is ignored."""
    out = []
    pos = 0
    while len(raw) - pos >= HEADER_SIZE:
        header = decode_header(raw, pos)
        size = header.length if header.type == 0 else 0
        if len(raw) - pos - HEADER_SIZE < size:
            break
        out.append((header, raw[pos + HEADER_SIZE : pos + HEADER_SIZE + size]))
        pos += HEADER_SIZE + size
    return out


async def read_frame(reader: asyncio.StreamReader) -> tuple[Header, bytes]:
    """Read one frame from a raw peer connection."""
    header = decode_header(await reader.readexactly(HEADER_SIZE))
    payload = await reader.readexactly(header.length) if header.type == 0 else b""
    return header, payload


async def read_until(
    reader: asyncio.StreamReader, kind: int, *, limit: float = 10.0
) -> tuple[Header, bytes]:
    """Read frames until one of type ``kind`` (hang guard: ``limit`` seconds)."""
    async with asyncio.timeout(limit):
        while True:
            header, payload = await read_frame(reader)
            if header.type == kind:
                return header, payload


class MemoryTransport(ByteTransport):
    """A transport that records what the session writes; the test feeds bytes in."""

    def __init__(self) -> None:
        """Start empty and open."""
        super().__init__()
        self.sent = bytearray()
        self.is_closed = False

    def _start(self) -> None:
        self._closed_future()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Record ``data``."""
        if not self.is_closed:
            self.sent += data

    def close(self) -> None:
        """Mark closed and report it like a real transport would."""
        if not self.is_closed:
            self.is_closed = True
            asyncio.get_running_loop().call_soon(self._deliver_lost, None)

    def abort(self) -> None:
        """Same as close."""
        self.close()

    def feed(self, data: bytes) -> None:
        """Deliver ``data`` to the session."""
        self._deliver(data)


@contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Collect whatever reaches the running loop's exception handler."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)
