"""Byte transports a session runs over.

A session needs a reliable, ordered byte pipe. :class:`ByteTransport` is the small
interface it uses; three implementations are provided:

* :class:`TcpTransport` - an :class:`asyncio.Protocol`, the fastest way to run over
  a socket (see :func:`~visiona.yamux.tcp.open_tcp_session`);
* :class:`StreamPairTransport` - wraps an existing ``(StreamReader, StreamWriter)``;
* :class:`FeedTransport` - a generic adapter for message transports such as a
  WebSocket: the owner feeds received bytes in with :meth:`FeedTransport.feed_data`
  and gives a ``send`` callable for the outgoing bytes.

The transport pushes what it receives into a :class:`TransportSink` (the session)
and reports write back-pressure with ``pause_writing``/``resume_writing``, like
asyncio's protocols.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from .frames import Buffer

_LOGGER = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024


class TransportSink(Protocol):
    """What a transport feeds: implemented by :class:`~visiona.yamux.Session`."""

    def data_received(self, data: bytes) -> None:
        """Bytes arrived (any split; frame boundaries mean nothing)."""

    def eof_received(self) -> None:
        """The peer closed its sending side; no more bytes will arrive."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """The transport is closed, cleanly (``None``) or with ``exc``."""

    def pause_writing(self) -> None:
        """The transport's outgoing buffer is over its high-water mark."""

    def resume_writing(self) -> None:
        """The transport's outgoing buffer drained below its low-water mark."""


class ByteTransport(abc.ABC):
    """A bidirectional byte pipe with write back-pressure, as a session sees it.

    Subclasses call :meth:`_deliver`, :meth:`_deliver_eof`, :meth:`_deliver_lost`,
    :meth:`_set_write_paused` from their I/O code; events that happen before a sink
    is attached are kept and replayed by :meth:`attach`.
    """

    def __init__(self) -> None:
        """Start detached: received bytes are held until :meth:`attach`."""
        self._sink: TransportSink | None = None
        self._early: list[bytes] = []
        self._early_eof = False
        self._early_lost: tuple[BaseException | None] | None = None
        self._write_paused = False
        self._resumed: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None

    # -- the session's side ---------------------------------------------------------
    def attach(self, sink: TransportSink) -> None:
        """Bind ``sink``; from now on every received byte goes to it."""
        if self._sink is not None:
            raise RuntimeError("transport already attached")
        self._sink = sink
        early, self._early = self._early, []
        for chunk in early:
            sink.data_received(chunk)
        if self._write_paused:
            sink.pause_writing()
        if self._early_eof:
            sink.eof_received()
        if self._early_lost is not None:
            sink.connection_lost(self._early_lost[0])
        self._start()

    @abc.abstractmethod
    def write(self, data: Buffer) -> None:
        """Queue ``data`` for sending; never blocks (watch ``pause_writing``).

        The transport may keep a reference to ``data``: the caller must not mutate it.
        """

    def writelines(self, chunks: list[Buffer]) -> None:
        """Queue several buffers at once (a vectored write where the loop supports it)."""
        for chunk in chunks:
            self.write(chunk)

    @abc.abstractmethod
    def close(self) -> None:
        """Send what is queued, then close. Idempotent."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close at once, dropping what is queued. Idempotent."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:  # noqa: ARG002 - base knows no details
        """Return transport details such as ``peername`` (``default`` when unknown)."""
        return default

    async def wait_closed(self) -> None:
        """Wait until the transport is closed."""
        await asyncio.shield(self._closed_future())

    @property
    def write_paused(self) -> bool:
        """True while the outgoing buffer is over its high-water mark."""
        return self._write_paused

    async def drain(self) -> None:
        """Wait until the outgoing buffer is below its low-water mark (or closed)."""
        while self._write_paused and not self._closed_future().done():
            if self._resumed is None or self._resumed.done():
                self._resumed = asyncio.get_running_loop().create_future()
            await asyncio.wait(
                [self._resumed, self._closed_future()], return_when=asyncio.FIRST_COMPLETED
            )

    # -- for subclasses ---------------------------------------------------------------
    @abc.abstractmethod
    def _start(self) -> None:
        """Hook run once a sink is attached (start reading, tasks...)."""

    def _closed_future(self) -> asyncio.Future[None]:
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        return self._closed

    def _deliver(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.data_received(data)
        else:
            self._early.append(data)

    def _deliver_eof(self) -> None:
        if self._sink is not None:
            self._sink.eof_received()
        else:
            self._early_eof = True

    def _deliver_lost(self, exc: BaseException | None) -> None:
        closed = self._closed_future()
        if not closed.done():
            closed.set_result(None)
        if self._sink is not None:
            self._sink.connection_lost(exc)
        elif self._early_lost is None:
            self._early_lost = (exc,)

    def _set_write_paused(self, *, paused: bool) -> None:
        if paused == self._write_paused:
            return
        self._write_paused = paused
        if not paused and self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)
        if self._sink is not None:
            if paused:
                self._sink.pause_writing()
            else:
                self._sink.resume_writing()


class TcpTransport(ByteTransport, asyncio.Protocol):
    """An :class:`asyncio.Protocol` carrying a session over a socket (the fast path).

    Use it as the protocol factory of ``loop.create_connection``/``create_server``.
    """

    def __init__(self, write_high: int = 1024 * 1024, write_low: int = 256 * 1024) -> None:
        """Set the outgoing buffer's water marks (bytes)."""
        super().__init__()
        self._transport: asyncio.Transport | None = None
        self._write_high = write_high
        self._write_low = write_low

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the socket transport (asyncio callback)."""
        # Stream sockets get a full Transport (uvloop's is not an asyncio.Transport subclass).
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=self._write_high, low=self._write_low)
        self._closed_future()

    def _start(self) -> None:
        """Nothing to start: asyncio already reads the socket."""

    def data_received(self, data: bytes) -> None:
        """Forward received bytes (asyncio callback)."""
        self._deliver(data)

    def eof_received(self) -> bool:
        """Forward the peer's EOF and let asyncio close the socket (asyncio callback)."""
        self._deliver_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Forward the end of the connection (asyncio callback)."""
        self._deliver_lost(exc)

    def pause_writing(self) -> None:
        """Forward write back-pressure (asyncio callback)."""
        self._set_write_paused(paused=True)

    def resume_writing(self) -> None:
        """Forward the end of write back-pressure (asyncio callback)."""
        self._set_write_paused(paused=False)

    def write(self, data: Buffer) -> None:
        """Queue ``data`` on the socket."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, chunks: list[Buffer]) -> None:
        """Queue several buffers (uvloop sends them with one ``writev``)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(chunks)

    def close(self) -> None:
        """Flush and close the socket."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close the socket at once."""
        if self._transport is not None:
            self._transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return the socket transport's extra info (``peername``, ``sockname``...)."""
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)


class StreamPairTransport(ByteTransport):
    """Run a session over an existing ``(asyncio.StreamReader, asyncio.StreamWriter)``.

    Slower than :class:`TcpTransport` (a reader task and an extra buffer copy), but it
    works with anything that produces a stream pair (TLS wrappers, subprocess pipes).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        write_high: int = 1024 * 1024,
    ) -> None:
        """Wrap ``reader`` and ``writer``; reading starts when a session attaches."""
        super().__init__()
        self._reader = reader
        self._writer = writer
        self._write_high = write_high
        self._read_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None

    def _start(self) -> None:
        self._closed_future()
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        exc: BaseException | None = None
        try:
            while True:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    self._deliver_eof()
                    break
                self._deliver(data)
        except asyncio.CancelledError:
            pass
        except (OSError, ConnectionError) as err:
            exc = err
        finally:
            self._writer.close()
            self._deliver_lost(exc)

    def write(self, data: Buffer) -> None:
        """Queue ``data`` on the writer; pause the session over the high-water mark."""
        if self._writer.is_closing():
            return
        self._writer.write(data)
        if (
            self._drain_task is None
            and self._writer.transport.get_write_buffer_size() > self._write_high
        ):
            self._set_write_paused(paused=True)
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.drain()
        self._drain_task = None
        self._set_write_paused(paused=False)

    def close(self) -> None:
        """Flush and close the writer; the reader task ends with it."""
        self._writer.close()

    def abort(self) -> None:
        """Abort the writer's transport and stop reading."""
        self._writer.transport.abort()
        if self._read_task is not None:
            self._read_task.cancel()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return the writer's extra info."""
        return self._writer.get_extra_info(name, default)


SendCallable = Callable[[bytes], Awaitable[None] | None]
CloseCallable = Callable[[], Awaitable[None] | None]


class FeedTransport(ByteTransport):
    """Adapter for message transports (WebSocket): bytes are fed in, sent by a callable.

    The owner calls :meth:`feed_data` with each received binary message,
    :meth:`feed_eof` or :meth:`connection_lost` when the transport ends, and gives
    ``send`` (sync or async; called with ``bytes`` of at most ``max_message`` bytes,
    one call at a time, in order) and an optional ``close`` callable. Outgoing bytes are
    coalesced while a ``send`` is in flight, so many small frames become one message.
    """

    def __init__(
        self,
        send: SendCallable,
        close: CloseCallable | None = None,
        *,
        max_message: int = 1024 * 1024,
        write_high: int = 4 * 1024 * 1024,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Bind the outgoing callables; nothing is sent before a session attaches."""
        super().__init__()
        self._send = send
        self._close_cb = close
        self._max_message = max_message
        self._write_high = write_high
        self._extra = dict(extra or {})
        self._out: deque[Buffer] = deque()  # references, not copies (see write())
        self._out_size = 0
        self._wakeup: asyncio.Event | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False
        self._lost = False

    # -- the owner's side -------------------------------------------------------------
    def feed_data(self, data: Buffer) -> None:
        """Hand bytes received from the peer to the session."""
        if not self._lost and data:
            self._deliver(bytes(data) if not isinstance(data, bytes) else data)

    def feed_eof(self) -> None:
        """The peer will send nothing more (e.g. the WebSocket got a close frame)."""
        if not self._lost:
            self._deliver_eof()

    def connection_lost(self, exc: BaseException | None = None) -> None:
        """The underlying transport is gone; the session ends."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._out.clear()
        self._out_size = 0
        if self._wakeup is not None:
            self._wakeup.set()
        self._deliver_lost(exc)

    # -- the session's side -----------------------------------------------------------
    def _start(self) -> None:
        self._closed_future()
        self._wakeup = asyncio.Event()
        self._writer_task = asyncio.get_running_loop().create_task(self._write_loop())

    def write(self, data: Buffer) -> None:
        """Queue ``data`` (by reference, as the contract allows) for the next message."""
        if self._closing or not data:
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._wakeup is not None:
            self._wakeup.set()
        if self._out_size > self._write_high:
            self._set_write_paused(paused=True)

    def _next_message(self) -> bytes:
        """Take up to ``max_message`` queued bytes as one message (one copy at most)."""
        out = self._out
        first = out[0]
        limit = self._max_message
        if len(first) > limit:
            view = first if isinstance(first, memoryview) else memoryview(first)
            message = bytes(view[:limit])
            out[0] = view[limit:]
        elif len(out) == 1 or len(first) + len(out[1]) > limit:
            out.popleft()
            message = first if type(first) is bytes else bytes(first)
        else:
            parts = [out.popleft()]
            size = len(first)
            while out and size + len(out[0]) <= limit:
                part = out.popleft()
                parts.append(part)
                size += len(part)
            message = b"".join(parts)
        self._out_size -= len(message)
        return message

    async def _write_loop(self) -> None:
        assert self._wakeup is not None  # noqa: S101 - set by _start before the task runs
        exc: BaseException | None = None
        try:
            while True:
                if not self._out:
                    if self._closing:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                result = self._send(self._next_message())
                if inspect.isawaitable(result):
                    await result
                if self._write_paused and self._out_size <= self._write_high // 4:
                    self._set_write_paused(paused=False)
        except asyncio.CancelledError:
            pass
        except Exception as err:  # noqa: BLE001 - any send failure ends the transport, reported below
            _LOGGER.debug("feed transport: send failed: %r", err)
            exc = err
        if not self._lost:
            await self._call_close()
            self.connection_lost(exc)

    async def _call_close(self) -> None:
        if self._close_cb is None:
            return
        try:
            result = self._close_cb()
            if inspect.isawaitable(result):
                await result
        except Exception as err:  # noqa: BLE001 - closing a broken transport may fail; nothing to add
            _LOGGER.debug("feed transport: close failed: %r", err)

    def close(self) -> None:
        """Send what is queued, then call ``close``."""
        if self._closing:
            return
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        elif not self._lost:
            self.connection_lost(None)

    def abort(self) -> None:
        """Drop what is queued and call ``close`` without waiting for a send."""
        self._out.clear()
        self._out_size = 0
        self._closing = True
        if self._writer_task is not None and not self._writer_task.done():
            self._writer_task.cancel()
        elif not self._lost:
            self.connection_lost(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return what the owner passed in ``extra``."""
        return self._extra.get(name, default)
