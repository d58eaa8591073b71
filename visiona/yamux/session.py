"""The yamux session: frame parsing, stream registry, flow control, keepalive, GoAway.

Everything runs on the event loop's thread, driven by transport callbacks; the
session starts no task of its own (keepalive and open timeouts are loop timers), so
when it ends nothing of it is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from typing import Any

from .config import Config
from .errors import (
    KeepAliveTimeoutError,
    OpenTimeoutError,
    PingTimeoutError,
    ProtocolError,
    RemoteGoAwayError,
    SessionClosedError,
    StreamsExhaustedError,
    YamuxError,
)
from .frames import (
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    HEADER,
    HEADER_SIZE,
    INITIAL_STREAM_WINDOW,
    MAX_STREAM_ID,
    MAX_WINDOW,
    PING,
    RST,
    SYN,
    WINDOW_UPDATE,
    GoAwayCode,
)
from .stream import Stream
from .transport import Buffer, ByteTransport

_LOGGER = logging.getLogger(__name__)

_FLUSH_SIZE = 64 * 1024  # flush the coalescing buffer once it holds this much
_ZERO_COPY_MIN = 16 * 1024  # payloads this large are not copied into it
_BATCH_SIZE = 1024 * 1024  # write queued large payloads once this much is waiting


@dataclasses.dataclass(frozen=True, slots=True)
class SessionStats:
    """A snapshot of a session's counters (for metrics)."""

    bytes_sent: int
    bytes_received: int
    frames_sent: int
    frames_received: int
    streams_opened: int
    streams_accepted: int
    open_streams: int


class Session:
    """A yamux session over a :class:`~visiona.yamux.transport.ByteTransport`.

    ``client=True`` opens odd stream ids, ``client=False`` even ones. Create it inside
    a running event loop; it starts reading at once. Use ``async with session:`` or
    ``await session.close()`` to end it; ``session.closed`` is set when it has ended,
    for whatever reason, and ``session.close_reason`` says why (``None`` after a local
    ``close()``). A misbehaving peer ends the session with GoAway(protocol error) and
    one log line; no exception reaches the event loop.
    """

    def __init__(
        self, transport: ByteTransport, *, client: bool, config: Config | None = None
    ) -> None:
        """Start a session on ``transport``, as the client or the server side."""
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._client = client
        self._config = config = config or Config()
        self._window = config.max_stream_window
        self._extra_window = config.max_stream_window - INITIAL_STREAM_WINDOW
        self._credit_threshold = max(1, config.max_stream_window // 2)
        self._frame_limit = config.frame_limit
        self._send_frame_size = config.send_frame_size
        self._write_buffer_high = config.write_buffer_high
        self._parity = 1 if client else 0
        self._next_id = 1 if client else 2
        self._max_peer_id = 0
        self._streams: dict[int, Stream] = {}
        self._accept_queue: deque[Stream] = deque()
        self._accept_waiters: deque[asyncio.Future[None]] = deque()
        self._syn_inflight = 0
        self._syn_waiters: deque[asyncio.Future[None]] = deque()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._ping_id = 0
        self._local_go_away = False
        self._remote_go_away = False
        # writing
        self._wbuf = bytearray()  # small frames, coalesced
        self._wlist: list[Buffer] = []  # queued buffers (wbuf pieces and large payloads)
        self._wlist_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._write_paused = False
        self._writable_waiter: asyncio.Future[None] | None = None
        # parsing
        self._hbuf = b""
        self._body_left = 0
        self._body_stream: Stream | None = None
        self._body_fin = False
        # keepalive
        self._ka_handle: asyncio.TimerHandle | None = None
        self._ka_ping_id: int | None = None
        self._abort_handle: asyncio.TimerHandle | None = None
        # lifecycle and counters
        self._terminated = False
        self._close_reason: YamuxError | None = None
        self._closed = asyncio.Event()
        self._bytes_sent = 0
        self._bytes_received = 0
        self._frames_sent = 0
        self._frames_received = 0
        self._streams_opened = 0
        self._streams_accepted = 0
        transport.attach(self)
        if config.enable_keepalive and not self._terminated:
            self._ka_handle = self._loop.call_later(config.keepalive_interval, self._keepalive_send)

    # -- public API -----------------------------------------------------------------
    @property
    def config(self) -> Config:
        """The session's settings."""
        return self._config

    @property
    def is_client(self) -> bool:
        """True on the side that opens odd stream ids."""
        return self._client

    @property
    def closed(self) -> asyncio.Event:
        """Set once the session has ended (``await session.closed.wait()``)."""
        return self._closed

    @property
    def is_closed(self) -> bool:
        """True once the session has ended."""
        return self._terminated

    @property
    def close_reason(self) -> YamuxError | None:
        """Why the session ended: ``None`` for a local ``close()``, else the error."""
        return self._close_reason

    @property
    def num_streams(self) -> int:
        """Streams currently registered (open in at least one direction)."""
        return len(self._streams)

    @property
    def bytes_sent(self) -> int:
        """Bytes written to the transport (headers included)."""
        return self._bytes_sent + self._wlist_size + len(self._wbuf)

    @property
    def bytes_received(self) -> int:
        """Bytes received from the transport (headers included)."""
        return self._bytes_received

    def stats(self) -> SessionStats:
        """Return a snapshot of the counters."""
        return SessionStats(
            bytes_sent=self.bytes_sent,
            bytes_received=self._bytes_received,
            frames_sent=self._frames_sent,
            frames_received=self._frames_received,
            streams_opened=self._streams_opened,
            streams_accepted=self._streams_accepted,
            open_streams=len(self._streams),
        )

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return the transport's extra info (``peername``...)."""
        return self._transport.get_extra_info(name, default)

    async def open_stream(self) -> Stream:
        """Open a stream (SYN). Data may be written at once, before the peer's ACK.

        Waits while ``accept_backlog`` of our opens are unacknowledged, at most
        ``open_timeout`` (then :class:`OpenTimeoutError`); an open that is never
        acknowledged is reset after ``open_timeout``.
        """
        self._check_open()
        if self._syn_inflight >= self._config.accept_backlog:
            try:
                async with asyncio.timeout(self._config.open_timeout):
                    while self._syn_inflight >= self._config.accept_backlog:
                        waiter = self._loop.create_future()
                        self._syn_waiters.append(waiter)
                        await waiter
                        self._check_open()
            except TimeoutError as err:
                raise OpenTimeoutError("too many unacknowledged opens") from err
            except asyncio.CancelledError:
                self._wake_one(self._syn_waiters)
                raise
        if self._next_id >= MAX_STREAM_ID - 1:
            raise StreamsExhaustedError("no stream id left in this session")
        if len(self._streams) >= self._config.max_streams:
            raise StreamsExhaustedError(f"{len(self._streams)} streams open (max_streams)")
        stream_id = self._next_id
        self._next_id += 2
        stream = Stream(self, stream_id, outbound=True)
        self._streams[stream_id] = stream
        self._streams_opened += 1
        self._syn_inflight += 1
        stream._syn_pending = True
        stream._recv_window += self._extra_window
        self._send_frame(WINDOW_UPDATE, SYN, stream_id, self._extra_window)
        stream._open_timer = self._loop.call_later(
            self._config.open_timeout, stream._on_open_timeout
        )
        return stream

    async def accept_stream(self) -> Stream:
        """Wait for the next stream the peer opens and acknowledge it (ACK)."""
        while True:
            while self._accept_queue:
                stream = self._accept_queue.popleft()
                stream._accepted = True
                self._streams_accepted += 1
                stream._recv_window += self._extra_window
                self._send_frame(WINDOW_UPDATE, ACK, stream.stream_id, self._extra_window)
                return stream
            self._check_open()
            waiter = self._loop.create_future()
            self._accept_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._accept_waiters:
                    self._accept_waiters.remove(waiter)
                elif self._accept_queue:
                    self._wake_one(self._accept_waiters)
                raise

    async def ping(self) -> float:
        """Send a ping and return the round-trip time in seconds."""
        self._check_alive()
        ping_id, waiter = self._new_ping()
        started = time.perf_counter()
        self._send_frame(PING, SYN, 0, ping_id)
        try:
            async with asyncio.timeout(self._config.keepalive_timeout):
                await waiter
        except TimeoutError as err:
            raise PingTimeoutError("ping not answered in time") from err
        finally:
            self._pings.pop(ping_id, None)
        self._check_alive()
        return time.perf_counter() - started

    async def go_away(self) -> None:
        """Tell the peer we accept no more streams (GoAway normal); existing ones go on."""
        self._check_alive()
        self._local_go_away = True
        self._send_frame(GO_AWAY, 0, 0, GoAwayCode.NORMAL)
        self._flush()

    async def close(self) -> None:
        """Send GoAway(normal), end every stream and close the transport."""
        self._terminate(None, GoAwayCode.NORMAL)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the session has ended and its transport is closed."""
        await self._closed.wait()
        try:
            async with asyncio.timeout(self._config.close_timeout):
                await self._transport.wait_closed()
        except TimeoutError:
            _LOGGER.debug("yamux: transport did not close in time; aborting it")
            self._transport.abort()

    async def __aenter__(self) -> Session:
        """Use the session in ``async with``; it is closed on exit."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the session."""
        await self.close()

    def __repr__(self) -> str:
        """Show the role, the stream count and whether it has ended."""
        role = "client" if self._client else "server"
        state = "closed" if self._terminated else "open"
        return f"<yamux.Session {role} {state} streams={len(self._streams)}>"

    # -- transport callbacks (TransportSink) --------------------------------------------
    def data_received(self, data: bytes) -> None:
        """Parse frames out of ``data``; any protocol violation ends the session."""
        if self._terminated:
            return
        self._bytes_received += len(data)
        try:
            self._parse(data)
        except ProtocolError as err:
            _LOGGER.warning("yamux: protocol error from peer: %s; sending GoAway", err)
            self._terminate(err, GoAwayCode.PROTOCOL_ERROR)
        except Exception as err:
            _LOGGER.exception("yamux: internal error while handling received data")
            reason = YamuxError(f"internal error: {err!r}")
            reason.__cause__ = err
            self._terminate(reason, GoAwayCode.INTERNAL_ERROR)

    def eof_received(self) -> None:
        """The peer closed its side of the transport."""
        self._terminate(SessionClosedError("the peer closed the connection"), None)

    def connection_lost(self, exc: BaseException | None) -> None:
        """The transport is gone."""
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        if not self._terminated:
            reason = SessionClosedError("connection lost")
            reason.__cause__ = exc
            self._terminate(reason, None)

    def pause_writing(self) -> None:
        """The transport's buffer is full: ``drain()`` will wait."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The transport's buffer drained: release ``drain()``."""
        self._write_paused = False
        waiter = self._writable_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- parsing ----------------------------------------------------------------------
    def _parse(self, data: bytes) -> None:
        end = len(data)
        pos = 0
        if self._body_left:
            take = min(self._body_left, end)
            stream = self._body_stream
            if stream is not None and not stream._finished:
                stream._on_data(data if take == end else data[:take])
            self._body_left -= take
            pos = take
            if self._body_left:
                return
            self._body_stream = None
            if self._body_fin and stream is not None and not stream._finished:
                stream._on_fin()
        if self._hbuf:
            need = HEADER_SIZE - len(self._hbuf)
            if end - pos < need:
                self._hbuf += data[pos:]
                return
            header = self._hbuf + data[pos : pos + need]
            self._hbuf = b""
            pos += need
            pos = self._frame(HEADER.unpack(header), data, pos)
        unpack_from = HEADER.unpack_from
        frame = self._frame
        while end - pos >= HEADER_SIZE and not self._terminated:
            version, kind, flags, stream_id, length = unpack_from(data, pos)
            pos += HEADER_SIZE
            if version == 0 and kind == DATA and not flags:
                # Fast path: plain data on an established stream.
                stream = self._streams.get(stream_id)
                if (
                    stream is not None
                    and length <= stream._recv_window
                    and not stream._eof
                    and length <= end - pos
                ):
                    self._frames_received += 1
                    stream._recv_window -= length
                    if length:
                        stream._on_data(data[pos : pos + length])
                    pos += length
                    continue
            pos = frame((version, kind, flags, stream_id, length), data, pos)
        if pos < end and not self._terminated:
            self._hbuf = data[pos:]

    def _frame(self, header: tuple[int, ...], data: bytes, pos: int) -> int:
        """Handle one frame whose payload (if any) starts at ``data[pos]``; return the new pos."""
        version, kind, flags, stream_id, length = header
        self._frames_received += 1
        if version != 0:
            raise ProtocolError(f"unsupported version {version}")
        if kind == DATA:
            return self._data_frame(flags, stream_id, length, data, pos)
        if kind == WINDOW_UPDATE:
            self._window_frame(flags, stream_id, length)
        elif kind == PING:
            if flags & SYN:
                self._send_frame(PING, ACK, 0, length)
            elif flags & ACK:
                self._on_pong(length)
        elif kind == GO_AWAY:
            if length == GoAwayCode.NORMAL:
                _LOGGER.debug("yamux: peer sent GoAway; no new streams")
                self._remote_go_away = True
                self._wake_all(self._syn_waiters)
            else:
                _LOGGER.info("yamux: peer ended the session with GoAway code %s", length)
                self._terminate(RemoteGoAwayError(length), None)
        else:
            raise ProtocolError(f"unknown frame type {kind}")
        return pos

    def _data_frame(self, flags: int, stream_id: int, length: int, data: bytes, pos: int) -> int:
        if length > self._frame_limit:
            raise ProtocolError(f"data frame of {length} bytes exceeds the frame limit")
        stream = self._stream_for(stream_id, flags)
        if stream is not None:
            stream = self._admit_data(stream, flags, length)
        end = len(data)
        avail = end - pos
        if length <= avail:
            if stream is not None:
                if length:
                    stream._on_data(data[pos : pos + length])
                if flags & FIN:
                    self._fin(stream)
            return pos + length
        if stream is not None and avail:
            stream._on_data(data[pos:])
        self._body_left = length - avail
        self._body_stream = stream
        self._body_fin = bool(flags & FIN)
        return end

    @staticmethod
    def _admit_data(stream: Stream, flags: int, length: int) -> Stream | None:
        """Apply RST/ACK and charge ``length`` to the window; None: drop the payload."""
        if flags & RST:
            stream._on_rst()
            return None
        if flags & ACK:
            stream._on_ack()
        if length:
            if stream._eof:
                raise ProtocolError(f"data on stream {stream.stream_id} after its FIN")
            if length > stream._recv_window:
                raise ProtocolError(
                    f"stream {stream.stream_id} overran its window "
                    f"({length} > {stream._recv_window} bytes)"
                )
            stream._recv_window -= length
        return stream

    def _window_frame(self, flags: int, stream_id: int, length: int) -> None:
        stream = self._stream_for(stream_id, flags)
        if stream is None:
            return
        if flags & RST:
            stream._on_rst()
            return
        if flags & ACK:
            stream._on_ack()
        if length:
            if stream._send_window + length > MAX_WINDOW:
                raise ProtocolError(f"window update overflows stream {stream_id}'s window")
            stream._on_window(length)
        if flags & FIN:
            self._fin(stream)

    def _fin(self, stream: Stream) -> None:
        if stream._eof:
            raise ProtocolError(f"second FIN on stream {stream.stream_id}")
        if stream._finished:
            return
        stream._on_fin()

    def _stream_for(self, stream_id: int, flags: int) -> Stream | None:
        """Find (or, on SYN, create) the frame's stream; None: drop the frame."""
        if stream_id == 0:
            raise ProtocolError("stream frame on stream id 0")
        if flags & SYN:
            return self._incoming(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id & 1 == self._parity:
                known = stream_id < self._next_id
            else:
                known = stream_id <= self._max_peer_id
            if not known:
                raise ProtocolError(f"frame for unknown stream {stream_id}")
            # A stream that has ended (e.g. we reset it): late frames are dropped.
        return stream

    def _incoming(self, stream_id: int) -> Stream | None:
        """The peer opens ``stream_id`` (SYN): register and queue it, or refuse it."""
        if stream_id & 1 == self._parity:
            raise ProtocolError(f"peer opened stream {stream_id} of our parity")
        if stream_id in self._streams:
            raise ProtocolError(f"duplicate SYN for stream {stream_id}")
        self._max_peer_id = max(self._max_peer_id, stream_id)
        if self._local_go_away:
            self._send_frame(WINDOW_UPDATE, RST, stream_id, 0)
            return None
        if len(self._streams) >= self._config.max_streams:
            raise ProtocolError(f"SYN for stream {stream_id} beyond max_streams")
        if len(self._accept_queue) >= self._config.accept_backlog:
            _LOGGER.warning("yamux: accept backlog full; resetting stream %s", stream_id)
            self._send_frame(WINDOW_UPDATE, RST, stream_id, 0)
            return None
        stream = Stream(self, stream_id, outbound=False)
        self._streams[stream_id] = stream
        self._accept_queue.append(stream)
        self._wake_one(self._accept_waiters)
        return stream

    # -- writing ----------------------------------------------------------------------
    def _send_frame(self, kind: int, flags: int, stream_id: int, length: int) -> None:
        """Queue a header-only frame."""
        if self._terminated:
            return
        self._wbuf += HEADER.pack(0, kind, flags, stream_id, length)
        self._frames_sent += 1
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _send_data(self, stream_id: int, payload: Buffer) -> None:
        """Queue a Data frame (credit already taken by the stream).

        Small payloads are copied into the coalescing buffer; large immutable ones are
        queued as they are (no copy) and go out with it in one vectored write.
        """
        if self._terminated:
            return
        wbuf = self._wbuf
        size = len(payload)
        wbuf += HEADER.pack(0, DATA, 0, stream_id, size)
        self._frames_sent += 1
        if size >= _ZERO_COPY_MIN and (
            type(payload) is bytes or (type(payload) is memoryview and type(payload.obj) is bytes)
        ):
            self._wbuf = bytearray()
            self._wlist += (wbuf, payload)
            self._wlist_size += len(wbuf) + size
            if self._wlist_size >= _BATCH_SIZE:
                self._flush()
            elif self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush)
            return
        wbuf += payload
        if len(wbuf) >= _FLUSH_SIZE:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Hand everything queued to the transport, in order."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        wbuf = self._wbuf
        if self._wlist:
            chunks = self._wlist
            if wbuf:
                chunks.append(wbuf)
                self._wbuf = bytearray()
            self._bytes_sent += self._wlist_size + len(wbuf)
            self._wlist = []
            self._wlist_size = 0
            self._transport.writelines(chunks)
        elif wbuf:
            self._bytes_sent += len(wbuf)
            self._wbuf = bytearray()
            self._transport.write(wbuf)

    async def _wait_writable(self) -> None:
        if self._writable_waiter is None or self._writable_waiter.done():
            self._writable_waiter = self._loop.create_future()
        await asyncio.shield(self._writable_waiter)

    # -- bookkeeping ------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._terminated:
            raise SessionClosedError("session is closed") from self._close_reason

    def _check_open(self) -> None:
        self._check_alive()
        if self._remote_go_away:
            raise RemoteGoAwayError(GoAwayCode.NORMAL, "peer accepts no new streams (GoAway)")

    def _forget(self, stream: Stream) -> None:
        """A stream ended: unregister it and give back its open slot."""
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        if not stream._outbound and not stream._accepted:
            with contextlib.suppress(ValueError):
                self._accept_queue.remove(stream)
        if stream._syn_pending:
            stream._syn_pending = False
            self._release_syn_slot()

    def _release_syn_slot(self) -> None:
        self._syn_inflight -= 1
        self._wake_one(self._syn_waiters)

    def _new_ping(self) -> tuple[int, asyncio.Future[None]]:
        ping_id = self._ping_id
        self._ping_id = (ping_id + 1) & 0xFFFFFFFF
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._pings[ping_id] = waiter
        return ping_id, waiter

    def _on_pong(self, ping_id: int) -> None:
        waiter = self._pings.pop(ping_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if ping_id == self._ka_ping_id:
            self._ka_ping_id = None
            if self._ka_handle is not None:
                self._ka_handle.cancel()
            self._ka_handle = self._loop.call_later(
                self._config.keepalive_interval, self._keepalive_send
            )

    def _keepalive_send(self) -> None:
        if self._terminated:
            return
        ping_id = self._ping_id
        self._ping_id = (ping_id + 1) & 0xFFFFFFFF
        self._ka_ping_id = ping_id
        self._send_frame(PING, SYN, 0, ping_id)
        self._ka_handle = self._loop.call_later(
            self._config.keepalive_timeout, self._keepalive_expired
        )

    def _keepalive_expired(self) -> None:
        self._ka_handle = None
        _LOGGER.warning("yamux: keepalive ping unanswered; closing the session")
        self._terminate(KeepAliveTimeoutError("keepalive ping unanswered"), None)

    @staticmethod
    def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
        """Wake the first waiter still waiting (also: in place of a cancelled one)."""
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @staticmethod
    def _wake_all(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _terminate(self, reason: YamuxError | None, go_away: int | None) -> None:
        """End the session once: GoAway if asked, close the transport, end every stream."""
        if self._terminated:
            return
        if go_away is not None:
            self._wbuf += HEADER.pack(0, GO_AWAY, 0, 0, go_away)
            self._frames_sent += 1
        self._flush()
        self._terminated = True
        self._close_reason = reason
        self._local_go_away = True
        if self._ka_handle is not None:
            self._ka_handle.cancel()
            self._ka_handle = None
        self._transport.close()
        # A peer that stops reading must not keep the transport (and its buffer) alive.
        self._abort_handle = self._loop.call_later(
            self._config.close_timeout, self._transport.abort
        )
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream._on_session_end(reason)
        self._accept_queue.clear()
        self._syn_inflight = 0
        self._hbuf = b""
        self._body_left = 0
        self._body_stream = None
        self._wake_all(self._accept_waiters)
        self._wake_all(self._syn_waiters)
        pings = list(self._pings.values())
        self._pings.clear()
        for waiter in pings:
            if not waiter.done():
                waiter.set_result(None)
        self.resume_writing()
        self._closed.set()
