"""The forwarder: each stream the cloud opens is copied to and from a local TCP service.

The local side is an :class:`asyncio.Protocol` (no stream reader/writer pair): bytes
from the local service go straight into the yamux stream, and after every MiB reading
pauses until the stream's backlog has drained; bytes from the stream are written to
the socket by the stream's own task, which waits while the socket's buffer is full. Both directions
half-close: the local service's EOF becomes a FIN, the cloud's FIN a socket EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import cast

from visiona.yamux import Stream, YamuxError

_LOGGER = logging.getLogger(__name__)
_READ_SIZE = 1024 * 1024
_CHECK_EVERY = 1024 * 1024


class _LocalSide(asyncio.Protocol):
    """The local TCP connection of one stream."""

    def __init__(
        self,
        stream: Stream,
        on_head: Callable[[bytes], None] | None = None,
        preamble: bytes = b"",
    ) -> None:
        self._stream = stream
        self._preamble = preamble  # written to the stream on connect, before any data
        self._on_head = on_head  # sees the first bytes of the answer, then is dropped
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.ended = self._loop.create_future()  # the local service will send nothing more
        self._drainer: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._unchecked = 0  # bytes written to the stream since its backlog was last checked

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self._preamble:
            try:
                self._stream.write(self._preamble)
            except YamuxError:
                self._abort()

    def data_received(self, data: bytes) -> None:
        if self._on_head is not None:
            on_head, self._on_head = self._on_head, None
            on_head(data)
        try:
            self._stream.write(data)
        except YamuxError:
            self._abort()
            return
        self._unchecked += len(data)
        if self._drainer is None and self._unchecked >= _CHECK_EVERY:
            # every MiB, hold further reads until the stream's backlog is small again
            self._unchecked = 0
            assert self.transport is not None  # noqa: S101 - set by connection_made
            self.transport.pause_reading()
            self._drainer = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self._stream.drain()
        except YamuxError:
            self._abort()
            return
        finally:
            self._drainer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        if self.ended.done() and not self._stream.is_closing():
            self._stream.write_eof()

    def eof_received(self) -> bool:
        if self._drainer is None:
            with contextlib.suppress(YamuxError):
                self._stream.write_eof()  # FIN after what is queued
        self._end()
        return True  # keep the socket open: the answer may still be going to the service

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._stream.reset()
        self._end()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def writable(self) -> None:
        """Wait while the socket's outgoing buffer is over its high-water mark."""
        if self._writable is not None:
            await self._writable

    def _end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def forward_stream(
    stream: Stream,
    host: str,
    port: int,
    head: bytes = b"",
    on_response_head: Callable[[bytes], None] | None = None,
    *,
    connected: bytes = b"",
    on_unreachable: Callable[[OSError], None] | None = None,
) -> None:
    """Dial ``host:port`` and copy both ways with half-close; reset the stream on failure.

    ``head``: bytes of the stream already read by the caller, sent to the service first.
    ``on_response_head``: called once with the first bytes the service answers (the
    busy header watch); None costs nothing. ``connected``: written to the stream once
    the connection is made, before anything the service sends (a TCP stream's ``101``
    answer). ``on_unreachable``: answers a failed dial instead of the stream reset.
    """
    loop = asyncio.get_running_loop()
    try:
        _, local = await loop.create_connection(
            lambda: _LocalSide(stream, on_response_head, connected), host, port
        )
    except OSError as err:
        _LOGGER.warning("agent: cannot reach %s:%s: %s", host, port, err.strerror or err)
        if on_unreachable is not None:
            on_unreachable(err)
        else:
            stream.reset()
        return
    transport = local.transport
    assert transport is not None  # noqa: S101 - set by connection_made
    if head:
        transport.write(head)
    try:
        while chunk := await stream.read(_READ_SIZE):
            if transport.is_closing():
                raise ConnectionResetError("the local service closed the connection")
            transport.write(chunk)
            await local.writable()
        if transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()  # half-close: the local service sees the end of the request
        await local.ended
    except (OSError, YamuxError) as err:
        _LOGGER.debug("agent: stream %s ended early: %r", stream.stream_id, err)
        stream.reset()
    finally:
        transport.close()
        stream.close()
