"""The write coalescer: every frame a session and its streams send goes through here.

Frames are queued, not written one by one: header-only frames and small payloads are
copied into one buffer, large immutable payloads are queued by reference, and the whole
queue leaves in one (vectored) transport write, or as soon as enough is waiting.
Per-frame cost then stays near the cost of packing a header.

A flush waits one loop iteration more than it must (two ``call_soon`` hops): what
the loop reads in between joins the same write. A proxied answer and the EOF that
follows it arrive in two reads, in two iterations; without the second hop they left
as two WebSocket messages. A stream's ACK may wait too (:meth:`send_lazy_frame`): it
leaves with the stream's first answer, or alone after a few milliseconds.
"""

from __future__ import annotations

import asyncio

from .frames import DATA, GO_AWAY, HEADER, Buffer
from .transport import ByteTransport

_FLUSH_SIZE = 64 * 1024  # flush the coalescing buffer once it holds this much
_ZERO_COPY_MIN = 16 * 1024  # payloads this large are not copied into it
_BATCH_SIZE = 1024 * 1024  # write queued large payloads once this much is waiting
_LAZY_DELAY = 0.005  # seconds a lazy frame waits for company before it leaves alone


class FrameWriter:
    """Queues frames for one transport and writes them in few, large writes.

    It also carries the transport's write back-pressure (``pause``/``resume``, which the
    session forwards) so that streams can wait for it in ``drain()``. After
    :meth:`close` every frame is dropped.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: ByteTransport) -> None:
        """Write to ``transport``; flushes are scheduled on ``loop``."""
        self._loop = loop
        self._transport = transport
        self._wbuf = bytearray()  # small frames, coalesced
        self._wlist: list[Buffer] = []  # queued buffers (wbuf pieces and large payloads)
        self._wlist_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._paused = False
        self._writable_waiter: asyncio.Future[None] | None = None
        self._bytes_flushed = 0
        #: frames queued since the start (for stats)
        self.frames_sent = 0

    @property
    def bytes_sent(self) -> int:
        """Bytes handed to the transport or queued for it (headers included)."""
        return self._bytes_flushed + self._wlist_size + len(self._wbuf)

    @property
    def idle(self) -> bool:
        """True when nothing waits to be written."""
        return not self._wbuf and not self._wlist

    @property
    def paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark."""
        return self._paused

    def send_frame(self, kind: int, flags: int, stream_id: int, length: int) -> None:
        """Queue a header-only frame."""
        if self._closed:
            return
        self._wbuf += HEADER.pack(0, kind, flags, stream_id, length)
        self.frames_sent += 1
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush_next)

    def send_lazy_frame(self, kind: int, flags: int, stream_id: int, length: int) -> None:
        """Queue a header-only frame that may wait up to 5 ms for other frames to join.

        For frames nobody waits on at once: the ACK of an accepted stream (the opener
        may send before it, and hashicorp/yamux allows 75 s for it) and the FIN that
        answers the peer's FIN (the stream is over for both sides but the bookkeeping).
        """
        if self._closed:
            return
        self._wbuf += HEADER.pack(0, kind, flags, stream_id, length)
        self.frames_sent += 1
        if self._flush_handle is None and self._lazy_timer is None:
            self._lazy_timer = self._loop.call_later(_LAZY_DELAY, self.flush)

    def send_data(self, stream_id: int, payload: Buffer) -> None:
        """Queue a Data frame (credit already taken by the stream).

        Small payloads are copied into the coalescing buffer; large immutable ones are
        queued as they are (no copy) and go out with it in one vectored write.
        """
        if self._closed:
            return
        wbuf = self._wbuf
        size = len(payload)
        wbuf += HEADER.pack(0, DATA, 0, stream_id, size)
        self.frames_sent += 1
        if size >= _ZERO_COPY_MIN and (
            type(payload) is bytes or (type(payload) is memoryview and type(payload.obj) is bytes)
        ):
            self._wbuf = bytearray()
            self._wlist += (wbuf, payload)
            self._wlist_size += len(wbuf) + size
            if self._wlist_size >= _BATCH_SIZE:
                self.flush()
            elif self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush_next)
            return
        wbuf += payload
        if len(wbuf) >= _FLUSH_SIZE:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush_next)

    def _flush_next(self) -> None:
        """First hop of a scheduled flush: flush in the next loop iteration."""
        self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand everything queued to the transport, in order."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        wbuf = self._wbuf
        if self._wlist:
            chunks = self._wlist
            if wbuf:
                chunks.append(wbuf)
                self._wbuf = bytearray()
            self._bytes_flushed += self._wlist_size + len(wbuf)
            self._wlist = []
            self._wlist_size = 0
            self._transport.writelines(chunks)
        elif wbuf:
            self._bytes_flushed += len(wbuf)
            self._wbuf = bytearray()
            self._transport.write(wbuf)

    def close(self, go_away: int | None) -> None:
        """Write what is queued, then GoAway(``go_away``) if given; drop every later frame."""
        if self._closed:
            return
        if go_away is not None:
            self._wbuf += HEADER.pack(0, GO_AWAY, 0, 0, go_away)
            self.frames_sent += 1
        self.flush()
        self._closed = True
        self.resume()

    def pause(self) -> None:
        """The transport's buffer is full: :meth:`wait_writable` will wait."""
        self._paused = True

    def resume(self) -> None:
        """The transport's buffer drained (or the session ended): release the waiters."""
        self._paused = False
        waiter = self._writable_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_writable(self) -> None:
        """Wait until the transport accepts more (cancelling one waiter spares the others)."""
        if self._writable_waiter is None or self._writable_waiter.done():
            self._writable_waiter = self._loop.create_future()
        await asyncio.shield(self._writable_waiter)
