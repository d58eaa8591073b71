"""The yamux session: stream lifecycle, control frames, GoAway and the public API.

Everything runs on the event loop's thread, driven by transport callbacks; the
session starts no task of its own (keepalive and open timeouts are loop timers), so
when it ends nothing of it is left running. Its parts live in their own modules: the
frame parser (:mod:`.parser`), the write coalescer (:mod:`.writer`), pings and the
keepalive (:mod:`.keepalive`) and the stream registry (:mod:`.registry`), which is
all a stream sees of its session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
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
    FIN,
    GO_AWAY,
    INITIAL_STREAM_WINDOW,
    MAX_STREAM_ID,
    PING,
    RST,
    SYN,
    WINDOW_UPDATE,
    GoAwayCode,
)
from .keepalive import Pings
from .parser import FrameParser
from .registry import StreamRegistry, wake_all, wake_one
from .stream import Stream
from .transport import ByteTransport
from .writer import FrameWriter

_LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionStats:
    """A snapshot of a session's counters (for metrics)."""

    bytes_sent: int
    bytes_received: int
    frames_sent: int
    frames_received: int
    streams_opened: int
    streams_accepted: int
    streams_refused: int
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
        self._loop = loop = asyncio.get_running_loop()
        self._transport = transport
        self._client = client
        self._config = config = config or Config()
        self._extra_window = config.max_stream_window - INITIAL_STREAM_WINDOW
        self._writer = writer = FrameWriter(loop, transport)
        self._registry = registry = StreamRegistry(self, loop, writer, config, client=client)
        self._parser: FrameParser[Stream] = FrameParser(self, registry.streams, config.frame_limit)
        self._pings = Pings(loop, self._send_ping, received=self._received_count)
        self._local_go_away = False
        self._remote_go_away = False
        self._abort_handle: asyncio.TimerHandle | None = None
        self._terminated = False
        self._close_reason: YamuxError | None = None
        self._closed = asyncio.Event()
        self._bytes_received = 0
        transport.attach(self)
        if config.enable_keepalive and not self._terminated:
            self._pings.start_keepalive(
                config.keepalive_interval, config.keepalive_timeout, self._keepalive_missed
            )

    def _received_count(self) -> int:
        return self._bytes_received

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
        return len(self._registry.streams)

    @property
    def bytes_sent(self) -> int:
        """Bytes written to the transport (headers included)."""
        return self._writer.bytes_sent

    @property
    def bytes_received(self) -> int:
        """Bytes received from the transport (headers included)."""
        return self._bytes_received

    def stats(self) -> SessionStats:
        """Return a snapshot of the counters."""
        registry = self._registry
        return SessionStats(
            bytes_sent=self._writer.bytes_sent,
            bytes_received=self._bytes_received,
            frames_sent=self._writer.frames_sent,
            frames_received=self._parser.frames_received,
            streams_opened=registry.streams_opened,
            streams_accepted=registry.streams_accepted,
            streams_refused=registry.streams_refused,
            open_streams=len(registry.streams),
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
        registry = self._registry
        backlog = self._config.accept_backlog
        if registry.syn_inflight >= backlog:
            try:
                async with asyncio.timeout(self._config.open_timeout):
                    while registry.syn_inflight >= backlog:
                        waiter = self._loop.create_future()
                        registry.syn_waiters.append(waiter)
                        await waiter
                        self._check_open()
            except TimeoutError as err:
                raise OpenTimeoutError("too many unacknowledged opens") from err
            except asyncio.CancelledError:
                wake_one(registry.syn_waiters)
                raise
        if registry.next_id >= MAX_STREAM_ID - 1:
            raise StreamsExhaustedError("no stream id left in this session")
        if len(registry.streams) >= self._config.max_streams:
            raise StreamsExhaustedError(f"{len(registry.streams)} streams open (max_streams)")
        stream_id = registry.next_id
        registry.next_id += 2
        stream = Stream(registry, stream_id, outbound=True)
        registry.streams[stream_id] = stream
        registry.streams_opened += 1
        registry.syn_inflight += 1
        stream.send_syn(self._extra_window)
        return stream

    async def accept_stream(self) -> Stream:
        """Wait for the next stream the peer opens and acknowledge it (ACK)."""
        registry = self._registry
        while True:
            if registry.accept_queue:
                stream = registry.accept_queue.popleft()
                registry.streams_accepted += 1
                stream.send_ack(self._extra_window)
                return stream
            self._check_open()
            waiter = self._loop.create_future()
            registry.accept_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in registry.accept_waiters:
                    registry.accept_waiters.remove(waiter)
                elif registry.accept_queue:
                    wake_one(registry.accept_waiters)
                raise

    async def ping(self) -> float:
        """Send a ping and return the round-trip time in seconds."""
        self._check_alive()
        started = time.perf_counter()
        ping_id, waiter = self._pings.ping()
        try:
            async with asyncio.timeout(self._config.keepalive_timeout):
                await waiter
        except TimeoutError as err:
            raise PingTimeoutError("ping not answered in time") from err
        finally:
            self._pings.discard(ping_id)
        self._check_alive()
        return time.perf_counter() - started

    def keep_alive(
        self,
        interval: float,
        timeout: float,
        *,
        on_miss: Callable[[int], bool],
        on_answer: Callable[[], None] | None = None,
    ) -> None:
        """Run the keepalive with the caller's policy (instead of ``enable_keepalive``'s).

        A Ping leaves ``interval`` seconds after the last answer (or miss), unless bytes
        arrived since then (the peer spoke: that counts as an answer); each one not
        answered within ``timeout`` calls ``on_miss(consecutive_misses)``, which returns
        True to keep pinging; ``on_answer()`` runs for each answered keepalive. One loop
        timer, no task: an idle session costs nothing between pings.
        """
        self._check_alive()
        self._pings.start_keepalive(interval, timeout, on_miss, on_answer)

    async def go_away(self) -> None:
        """Tell the peer we accept no more streams (GoAway normal); existing ones go on."""
        self._check_alive()
        self._local_go_away = True
        self._writer.send_frame(GO_AWAY, 0, 0, GoAwayCode.NORMAL)
        self._writer.flush()

    async def close(self) -> None:
        """Send GoAway(normal), end every stream and close the transport."""
        self._terminate(None, GoAwayCode.NORMAL)
        await self.wait_closed()

    def abort(self, code: GoAwayCode = GoAwayCode.INTERNAL_ERROR) -> None:
        """End the session now, from synchronous code: GoAway(``code``), close the transport.

        Every stream fails; ``close_reason`` stays ``None`` (a local decision).
        """
        self._terminate(None, code)

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
        return f"<yamux.Session {role} {state} streams={len(self._registry.streams)}>"

    # -- transport callbacks (TransportSink) --------------------------------------------
    def data_received(self, data: bytes) -> None:
        """Parse frames out of ``data``; any protocol violation ends the session."""
        if self._terminated:
            return
        self._bytes_received += len(data)
        try:
            self._parser.feed(data)
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
        self._writer.pause()

    def resume_writing(self) -> None:
        """The transport's buffer drained: release ``drain()``."""
        self._writer.resume()

    # -- frame callbacks (FrameHandler, called by the parser) ---------------------------
    def on_data_frame(self, flags: int, stream_id: int, length: int) -> Stream | None:
        """A Data header: apply SYN/RST/ACK, charge the window; None drops the payload."""
        stream = self._stream_for(stream_id, flags)
        if stream is None:
            return None
        if flags & RST:
            stream.peer_reset()
            return None
        if flags & ACK:
            stream.peer_acked()
        if length:
            stream.charge(length)
        return stream

    def on_data_fin(self, sink: Stream) -> None:
        """The Data frame just delivered carried FIN."""
        sink.peer_fin()

    def on_window_update(self, flags: int, stream_id: int, length: int) -> None:
        """A WindowUpdate: SYN/ACK/RST/FIN and send credit."""
        stream = self._stream_for(stream_id, flags)
        if stream is None:
            return
        if flags & RST:
            stream.peer_reset()
            return
        if flags & ACK:
            stream.peer_acked()
        if length:
            stream.grant(length)
        if flags & FIN:
            stream.peer_fin()

    def on_ping(self, flags: int, value: int) -> None:
        """Answer a ping request at once; hand an answer to the ping bookkeeping."""
        if flags & SYN:
            self._writer.send_frame(PING, ACK, 0, value)
        elif flags & ACK:
            self._pings.answered(value)

    def on_go_away(self, code: int) -> None:
        """GoAway(normal): open no more streams; any other code ends the session."""
        if code == GoAwayCode.NORMAL:
            _LOGGER.debug("yamux: peer sent GoAway; no new streams")
            self._remote_go_away = True
            wake_all(self._registry.syn_waiters)
        else:
            _LOGGER.info("yamux: peer ended the session with GoAway code %s", code)
            self._terminate(RemoteGoAwayError(code), None)

    def _stream_for(self, stream_id: int, flags: int) -> Stream | None:
        """Find (or, on SYN, create) the frame's stream; None: drop the frame."""
        if stream_id == 0:
            raise ProtocolError("stream frame on stream id 0")
        if flags & SYN:
            return self._incoming(stream_id)
        registry = self._registry
        stream = registry.streams.get(stream_id)
        if stream is None and not registry.is_known(stream_id):
            raise ProtocolError(f"frame for unknown stream {stream_id}")
        # None for a known id: a stream that has ended (e.g. we reset it); late frames drop.
        return stream

    def _incoming(self, stream_id: int) -> Stream | None:
        """The peer opens ``stream_id`` (SYN): register and queue it, or refuse it."""
        registry = self._registry
        if stream_id & 1 == registry.parity:
            raise ProtocolError(f"peer opened stream {stream_id} of our parity")
        if stream_id in registry.streams:
            raise ProtocolError(f"duplicate SYN for stream {stream_id}")
        registry.max_peer_id = max(registry.max_peer_id, stream_id)
        if self._local_go_away or self._config.refuse_streams:
            self._refuse(stream_id)
            return None
        if len(registry.streams) >= self._config.max_streams:
            raise ProtocolError(f"SYN for stream {stream_id} beyond max_streams")
        if len(registry.accept_queue) >= self._config.accept_backlog:
            _LOGGER.warning("yamux: accept backlog full; resetting stream %s", stream_id)
            self._refuse(stream_id)
            return None
        stream = Stream(registry, stream_id, outbound=False)
        registry.streams[stream_id] = stream
        registry.accept_queue.append(stream)
        wake_one(registry.accept_waiters)
        return stream

    def _refuse(self, stream_id: int) -> None:
        """Reset the peer's new stream at once; its frames (in flight) are dropped."""
        self._registry.streams_refused += 1
        self._writer.send_frame(WINDOW_UPDATE, RST, stream_id, 0)

    # -- bookkeeping ------------------------------------------------------------------
    def _send_ping(self, ping_id: int) -> None:
        self._writer.send_frame(PING, SYN, 0, ping_id)

    def _check_alive(self) -> None:
        if self._terminated:
            raise SessionClosedError("session is closed") from self._close_reason

    def _check_open(self) -> None:
        self._check_alive()
        if self._remote_go_away:
            raise RemoteGoAwayError(GoAwayCode.NORMAL, "peer accepts no new streams (GoAway)")

    def _keepalive_missed(self, misses: int) -> bool:  # noqa: ARG002 - one miss is enough
        _LOGGER.warning("yamux: keepalive ping unanswered; closing the session")
        self._terminate(KeepAliveTimeoutError("keepalive ping unanswered"), None)
        return False

    def _terminate(self, reason: YamuxError | None, go_away: int | None) -> None:
        """End the session once: GoAway if asked, close the transport, end every stream."""
        if self._terminated:
            return
        self._writer.close(go_away)
        self._terminated = True
        self._close_reason = reason
        self._local_go_away = True
        self._parser.stop()
        self._pings.close()
        self._transport.close()
        # A peer that stops reading must not keep the transport (and its buffer) alive.
        self._abort_handle = self._loop.call_later(
            self._config.close_timeout, self._transport.abort
        )
        for stream in self._registry.clear():
            stream.session_ended(reason)
        self._closed.set()
