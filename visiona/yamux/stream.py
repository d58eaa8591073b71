"""One yamux stream: an asyncio-style reader and writer over a session.

A :class:`Stream` behaves like an ``asyncio.StreamReader`` and ``StreamWriter`` in one
object (``read``/``readexactly``/``readuntil``/``readline`` and ``write``/``drain``/
``write_eof``/``close``/``wait_closed``), so ordinary protocol code runs on it. Its
state lives here: the session drives it through the methods of its "session side"
section, and the stream reaches its session only through a :class:`StreamOwner`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from .errors import (
    OpenTimeoutError,
    ProtocolError,
    SessionClosedError,
    StreamClosedError,
    StreamResetError,
    YamuxError,
)
from .frames import ACK, FIN, INITIAL_STREAM_WINDOW, MAX_WINDOW, RST, SYN, WINDOW_UPDATE, Buffer

if TYPE_CHECKING:
    from .session import Session
    from .writer import FrameWriter

_LOGGER = logging.getLogger(__name__)

_READLINE_LIMIT = 64 * 1024
_JOIN_LIMIT = 64 * 1024


class StreamOwner(Protocol):
    """All a stream uses of its session (implemented by the session's stream registry)."""

    #: the public session object (``Stream.session``, extra info)
    session: Session
    loop: asyncio.AbstractEventLoop
    #: where the stream's frames go
    writer: FrameWriter
    #: send a window update once this much was read
    credit_threshold: int
    #: the largest Data frame to send
    send_frame_size: int
    #: ``drain()`` waits while more than this waits for credit
    write_buffer_high: int
    #: seconds an open may wait for the peer's ACK
    open_timeout: float

    def stream_ended(self, stream: Stream, *, queued: bool, held_slot: bool) -> None:
        """The stream ended: unregister it (``queued``: never accepted; ``held_slot``:
        an open of ours still unacknowledged)."""

    def open_acknowledged(self) -> None:
        """Our open was acknowledged: its slot is free."""


class Stream:
    """A bidirectional byte stream multiplexed on a :class:`~visiona.yamux.Session`.

    Obtained from :meth:`Session.open_stream` or :meth:`Session.accept_stream`, never
    built directly. ``write`` never blocks: data beyond the peer's credit waits in the
    stream until a window update arrives, and ``await drain()`` waits until that backlog
    is small again. ``write_eof()`` half-closes (FIN); reading goes on until the peer's
    FIN. ``close()`` sends FIN and abandons reading; ``reset()`` aborts both directions.
    """

    def __init__(self, owner: StreamOwner, stream_id: int, *, outbound: bool) -> None:
        """Create the state of stream ``stream_id`` (internal: the session calls this)."""
        self._owner = owner
        self._loop = owner.loop
        self._writer = owner.writer
        self._credit_threshold = owner.credit_threshold
        self._frame_size = owner.send_frame_size
        self._write_high = owner.write_buffer_high
        self._id = stream_id
        self._outbound = outbound
        self._accepted = False  # handed out by accept_stream (inbound streams only)
        # receiving
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of _chunks[0] already consumed
        self._buffered = 0
        self._recv_window = INITIAL_STREAM_WINDOW  # the credit the peer holds
        self._consumed = 0  # bytes read since the last window update we sent
        self._eof = False  # the peer's FIN arrived
        self._read_closed = False  # close() was called: incoming data is dropped
        self._read_waiter: asyncio.Future[None] | None = None
        # sending
        self._send_window = INITIAL_STREAM_WINDOW
        self._pending: deque[bytes | memoryview] = deque()
        self._pending_size = 0
        self._write_closed = False  # write_eof() or close() was called
        self._fin_sent = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # lifecycle
        self._syn_pending = False  # we sent SYN, no ACK yet (holds a backlog slot)
        self._open_timer: asyncio.TimerHandle | None = None
        self._error: YamuxError | None = None  # fails reading and writing
        self._write_error: YamuxError | None = None  # fails writing only
        self._finished = False  # no longer registered in the session
        self._done_waiter: asyncio.Future[None] | None = None

    # -- information ----------------------------------------------------------------
    @property
    def stream_id(self) -> int:
        """The yamux stream id (odd when the client opened it, even for the server)."""
        return self._id

    @property
    def session(self) -> Session:
        """The session this stream belongs to."""
        return self._owner.session

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return ``stream_id``, ``session`` or the transport's info (``peername``...)."""
        if name == "stream_id":
            return self._id
        session = self._owner.session
        if name == "session":
            return session
        return session.get_extra_info(name, default)

    def at_eof(self) -> bool:
        """True once the peer's FIN arrived and every buffered byte has been read."""
        return (self._eof or self._read_closed) and not self._buffered

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return self._buffered

    def is_closing(self) -> bool:
        """True once our write side is closed (``write_eof``/``close``/reset/session end)."""
        return self._write_closed or self._error is not None or self._write_error is not None

    def __repr__(self) -> str:
        """Show the id and the state flags."""
        state = [
            name
            for name, on in (
                ("eof", self._eof),
                ("write_closed", self._write_closed),
                ("fin_sent", self._fin_sent),
                ("finished", self._finished),
            )
            if on
        ]
        if self._error is not None:
            state.append(f"error={self._error!r}")
        return f"<yamux.Stream {self._id} {' '.join(state) or 'open'}>"

    # -- reading --------------------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (``-1``: until EOF); ``b""`` at EOF."""
        if n == 0:
            return b""
        if n < 0:
            parts: list[bytes] = []
            while True:
                block = await self.read(1 << 20)
                if not block:
                    return b"".join(parts)
                parts.append(block)
        while not self._buffered:
            if self._error is not None:
                raise self._error
            if self._eof or self._read_closed:
                return b""
            await self._wait_readable()
        # A large first chunk is returned alone (no join; no copy at all when it fits
        # whole); small chunks (tiny frames) are joined, up to _JOIN_LIMIT bytes.
        first_left = len(self._chunks[0]) - self._offset
        if first_left >= n or first_left >= _JOIN_LIMIT or len(self._chunks) == 1:
            return self._take(min(n, first_left))
        return self._take(min(n, self._buffered, _JOIN_LIMIT))

    async def readexactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes, or raise ``asyncio.IncompleteReadError`` at EOF."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if self._buffered >= n:
            return self._take(n) if n else b""
        # Consume as data arrives: waiting for all of ``n`` could exceed the window.
        parts: list[bytes] = []
        left = n
        while left:
            if self._buffered:
                part = self._take(left)
                parts.append(part)
                left -= len(part)
                continue
            if self._error is not None:
                raise self._error
            if self._eof or self._read_closed:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            await self._wait_readable()
        return b"".join(parts)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Read up to and including ``separator`` (like ``StreamReader.readuntil``)."""
        seplen = len(separator)
        if not seplen:
            raise ValueError("separator should be at least one-byte string")
        start = 0
        while True:
            if self._buffered:
                self._coalesce()
                first = self._chunks[0]
                index = first.find(separator, self._offset + start)
                if index >= 0:
                    return self._take(index + seplen - self._offset)
                start = max(0, self._buffered - seplen + 1)
                if self._buffered > _READLINE_LIMIT:
                    raise asyncio.LimitOverrunError(
                        "separator is not found, and chunk exceed the limit", self._buffered
                    )
            if self._error is not None:
                raise self._error
            if self._eof or self._read_closed:
                partial = self._take(self._buffered) if self._buffered else b""
                raise asyncio.IncompleteReadError(partial, None)
            await self._wait_readable()

    async def readline(self) -> bytes:
        """Read one ``\\n``-terminated line; at EOF return what is left (maybe ``b""``)."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as err:
            return err.partial
        except asyncio.LimitOverrunError as err:
            raise ValueError(err.args[0]) from err

    def __aiter__(self) -> Stream:
        """Iterate over lines, like ``StreamReader``."""
        return self

    async def __anext__(self) -> bytes:
        """Return the next line; stop at EOF."""
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    def _coalesce(self) -> None:
        chunks = self._chunks
        if len(chunks) > 1:
            first = chunks.popleft()
            joined = b"".join([first[self._offset :], *chunks])
            chunks.clear()
            chunks.append(joined)
            self._offset = 0

    def _take(self, n: int) -> bytes:
        """Remove and return up to ``n`` buffered bytes (at least one must be buffered)."""
        chunks = self._chunks
        first = chunks[0]
        offset = self._offset
        left = len(first) - offset
        if left > n:
            out = first[offset : offset + n]
            self._offset = offset + n
        elif left == n or len(chunks) == 1:
            out = first[offset:] if offset else first
            chunks.popleft()
            self._offset = 0
        else:
            parts = [first[offset:] if offset else first]
            chunks.popleft()
            self._offset = 0
            size = left
            while chunks and size < n:
                chunk = chunks[0]
                room = n - size
                if len(chunk) <= room:
                    parts.append(chunks.popleft())
                    size += len(chunk)
                else:
                    parts.append(chunk[:room])
                    self._offset = room
                    size = n
            out = b"".join(parts)
        size = len(out)
        self._buffered -= size
        self._consumed += size
        if self._consumed >= self._credit_threshold:
            self._send_credit()
        return out

    def _send_credit(self) -> None:
        """Give the peer back the credit for what was read (a window update)."""
        delta = self._consumed
        self._consumed = 0
        if self._eof or self._finished or not delta:
            return
        self._recv_window += delta
        self._writer.send_frame(WINDOW_UPDATE, 0, self._id, delta)

    async def _wait_readable(self) -> None:
        waiter = self._loop.create_future()
        self._read_waiter = waiter
        try:
            await waiter
        finally:
            self._read_waiter = None

    # -- writing --------------------------------------------------------------------
    def write(self, data: Buffer) -> None:
        """Queue ``data``; send what the peer's credit allows now, the rest later."""
        if self._error is not None:
            raise self._error
        if self._write_error is not None:
            raise self._write_error
        if self._write_closed:
            raise StreamClosedError(f"stream {self._id}: write side is closed")
        size = len(data)
        if not size:
            return
        if not self._pending_size and size <= self._send_window and size <= self._frame_size:
            self._send_window -= size
            self._writer.send_data(self._id, data)
            return
        self._pending.append(data if isinstance(data, bytes) else bytes(data))
        self._pending_size += size
        self._push()

    def writelines(self, data: list[Buffer]) -> None:
        """Write every buffer of ``data`` in order."""
        for item in data:
            self.write(item)

    def can_write_eof(self) -> bool:
        """Always true: yamux streams half-close with FIN."""
        return True

    def write_eof(self) -> None:
        """Half-close: send FIN after the queued data; reading goes on until the peer's FIN."""
        if self._write_closed or self._error is not None:
            return
        self._write_closed = True
        if not self._pending_size:
            self._send_fin()

    async def drain(self) -> None:
        """Wait until little queued data is left and the transport accepts more."""
        writer = self._writer
        while True:
            if self._error is not None:
                raise self._error
            if self._write_error is not None:
                raise self._write_error
            if self._pending_size > self._write_high:
                waiter = self._loop.create_future()
                self._drain_waiter = waiter
                try:
                    await waiter
                finally:
                    self._drain_waiter = None
                continue
            if writer.paused:
                await writer.wait_writable()
                continue
            return

    def close(self) -> None:
        """Send FIN after the queued data and stop reading: later data is dropped.

        No window update follows the FIN unless the peer could send nothing at all
        without one (its window is used up and it has not finished): a peer that sends
        its own FIN at the same moment forgets the stream once both FINs crossed, and a
        later frame for it is a "frame for missing stream" to hashicorp/yamux.
        """
        self.write_eof()
        if not self._read_closed:
            self._read_closed = True
            dropped = self._buffered
            self._chunks.clear()
            self._offset = 0
            self._buffered = 0
            self._consumed += dropped
            self._credit_if_blocked()
            self._wake_reader()

    def _credit_if_blocked(self) -> None:
        """After close(): give back credit only when the peer's window is used up or it
        keeps sending a lot (half the largest window dropped since the last update), so
        a peer still sending can finish (its data is dropped here) and no update is sent
        that the peer does not need."""
        if self._consumed and (self._recv_window <= 0 or self._consumed >= self._credit_threshold):
            self._send_credit()

    async def wait_closed(self) -> None:
        """Wait until our FIN is sent (all queued data went out) or the stream ended."""
        while not (self._fin_sent or self._finished or self._error is not None):
            waiter = self._loop.create_future()
            self._done_waiter = waiter
            try:
                await waiter
            finally:
                self._done_waiter = None

    def reset(self) -> None:
        """Abort the stream in both directions (RST); pending data is dropped."""
        if self._finished:
            return
        self._writer.send_frame(WINDOW_UPDATE, RST, self._id, 0)
        self._fail(StreamResetError(f"stream {self._id} was reset locally"))

    async def __aenter__(self) -> Stream:
        """Use the stream in ``async with``; it is closed on exit."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close (reset when leaving with an exception)."""
        if exc_info[0] is not None:
            self.reset()
        else:
            self.close()

    def _push(self) -> None:
        """Send queued data as far as the peer's credit allows."""
        pending = self._pending
        frame_size = self._frame_size
        send = self._writer.send_data
        while pending and self._send_window > 0:
            limit = min(self._send_window, frame_size)
            chunk = pending[0]
            piece: bytes | memoryview
            if len(chunk) >= limit:
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                piece = view[:limit]
                if len(chunk) == limit:
                    pending.popleft()
                else:
                    pending[0] = view[limit:]
            else:
                # Small writes that waited for credit leave together, as one frame.
                parts = [pending.popleft()]
                size = len(chunk)
                while pending and size + len(pending[0]) <= limit:
                    part = pending.popleft()
                    parts.append(part)
                    size += len(part)
                piece = b"".join(parts) if len(parts) > 1 else parts[0]
            take = len(piece)
            self._send_window -= take
            self._pending_size -= take
            send(self._id, piece)
        if not self._pending_size and self._write_closed and not self._fin_sent:
            self._send_fin()
        if self._pending_size <= self._write_high:
            waiter = self._drain_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _send_fin(self) -> None:
        self._fin_sent = True
        if self._eof:
            # The peer's FIN came first: ours only ends the stream and nobody waits on
            # it, so it may wait for company (the next request's frames, typically).
            self._writer.send_lazy_frame(WINDOW_UPDATE, FIN, self._id, 0)
        else:
            self._writer.send_frame(WINDOW_UPDATE, FIN, self._id, 0)
        self._wake_done()
        if self._eof:
            self._finish()

    # -- the session's side: called by the session (and its parser) only ------------
    def send_syn(self, extra_window: int) -> None:
        """Open the stream (SYN granting ``extra_window``); reset it if no ACK comes in time."""
        self._syn_pending = True
        self._recv_window += extra_window
        self._writer.send_frame(WINDOW_UPDATE, SYN, self._id, extra_window)
        self._open_timer = self._loop.call_later(self._owner.open_timeout, self._on_open_timeout)

    def send_ack(self, extra_window: int) -> None:
        """Accept the peer's open (ACK granting ``extra_window``).

        The ACK is lazy: it leaves with the stream's first answer when that comes soon.
        """
        self._accepted = True
        self._recv_window += extra_window
        self._writer.send_lazy_frame(WINDOW_UPDATE, ACK, self._id, extra_window)

    def receive_data(self, data: bytes) -> None:
        """A whole plain Data frame: charge the window, then buffer (or drop) ``data``."""
        size = len(data)
        if size > self._recv_window or self._eof:
            self.charge(size)  # raises the precise protocol error
        self._recv_window -= size
        if self._read_closed:
            self._consumed += size
            self._credit_if_blocked()
            return
        self._chunks.append(data)
        self._buffered += size
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def charge(self, length: int) -> None:
        """A Data frame of ``length`` bytes is coming: take it from the receive window."""
        if self._eof:
            raise ProtocolError(f"data on stream {self._id} after its FIN")
        if length > self._recv_window:
            raise ProtocolError(
                f"stream {self._id} overran its window ({length} > {self._recv_window} bytes)"
            )
        self._recv_window -= length

    def feed_data(self, data: bytes) -> None:
        """Payload of a frame already charged: buffer it (dropped once ended or closed)."""
        if self._finished:
            return
        if self._read_closed:
            self._consumed += len(data)
            self._credit_if_blocked()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def grant(self, delta: int) -> None:
        """The peer gave ``delta`` bytes of send credit (a window update)."""
        if self._send_window + delta > MAX_WINDOW:
            raise ProtocolError(f"window update overflows stream {self._id}'s window")
        self._send_window += delta
        if self._pending:
            self._push()

    def peer_acked(self) -> None:
        """The peer acknowledged our open (ACK)."""
        if self._syn_pending:
            self._syn_pending = False
            if self._open_timer is not None:
                self._open_timer.cancel()
                self._open_timer = None
            self._owner.open_acknowledged()

    def peer_fin(self) -> None:
        """The peer closed its direction (FIN): read what is buffered, then EOF."""
        if self._eof:
            raise ProtocolError(f"second FIN on stream {self._id}")
        if self._finished:
            return
        self._eof = True
        self._wake_reader()
        if self._fin_sent:
            self._finish()

    def peer_reset(self) -> None:
        """The peer reset the stream (RST)."""
        self._fail(StreamResetError(f"stream {self._id} was reset by the peer"))

    def _on_open_timeout(self) -> None:
        self._open_timer = None
        if self._syn_pending and not self._finished:
            _LOGGER.debug("stream %s: no ACK within the open timeout; resetting", self._id)
            self._writer.send_frame(WINDOW_UPDATE, RST, self._id, 0)
            self._fail(OpenTimeoutError(f"stream {self._id} was not acknowledged in time"))

    def session_ended(self, reason: YamuxError | None) -> None:
        """The session ended: wake everyone; keep only data that is complete (FIN seen)."""
        self._pending.clear()
        self._pending_size = 0
        err = SessionClosedError(f"stream {self._id}: session closed")
        if reason is not None:
            err.__cause__ = reason
        if self._eof and self._error is None:
            # The peer's data is complete: it stays readable; only writing fails.
            self._write_error = err
        else:
            self._chunks.clear()
            self._offset = 0
            self._buffered = 0
            if self._error is None:
                self._error = err
        self._finish(notify_session=False)

    def _fail(self, error: YamuxError) -> None:
        if self._error is None:
            self._error = error
        self._chunks.clear()
        self._offset = 0
        self._buffered = 0
        self._pending.clear()
        self._pending_size = 0
        self._finish()

    def _finish(self, *, notify_session: bool = True) -> None:
        """Unregister from the session and wake every waiter."""
        if not self._finished:
            self._finished = True
            if self._open_timer is not None:
                self._open_timer.cancel()
                self._open_timer = None
            if notify_session:
                self._owner.stream_ended(
                    self,
                    queued=not self._outbound and not self._accepted,
                    held_slot=self._syn_pending,
                )
            self._syn_pending = False
        self._wake_reader()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._wake_done()

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_done(self) -> None:
        waiter = self._done_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


__all__ = ["Stream"]
