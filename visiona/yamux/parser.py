"""The frame parser: turns received bytes (any split) into calls on a frame handler.

The parser knows the wire format and nothing of stream state: it checks the version,
the frame type and the frame size limit, hands payloads to the object the handler
names for them (a stream), and remembers a header or a payload cut by the end of a
read. One fast path - a plain Data frame (no flags) for a known stream, wholly inside
the read - skips the handler altogether: the stream charges its window itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

from .errors import ProtocolError
from .frames import DATA, FIN, GO_AWAY, HEADER, HEADER_SIZE, PING, WINDOW_UPDATE


class PayloadSink(Protocol):
    """What receives Data payloads: implemented by :class:`~visiona.yamux.Stream`."""

    def receive_data(self, data: bytes) -> None:
        """A whole plain Data frame: charge the receive window, then buffer ``data``."""

    def feed_data(self, data: bytes) -> None:
        """A piece of a frame already admitted by the handler: buffer it."""


_Sink = TypeVar("_Sink", bound=PayloadSink)


class FrameHandler(Protocol[_Sink]):
    """What the parser reports frames to: implemented by :class:`~visiona.yamux.Session`."""

    def on_data_frame(self, flags: int, stream_id: int, length: int) -> _Sink | None:
        """A Data header (not on the fast path); return its payload's sink, or None to drop it."""

    def on_data_fin(self, sink: _Sink) -> None:
        """The Data frame just delivered to ``sink`` carried FIN (after its payload)."""

    def on_window_update(self, flags: int, stream_id: int, length: int) -> None:
        """A WindowUpdate frame."""

    def on_ping(self, flags: int, value: int) -> None:
        """A Ping frame (request or answer)."""

    def on_go_away(self, code: int) -> None:
        """A GoAway frame."""


class FrameParser(Generic[_Sink]):
    """An incremental parser for one session's incoming byte stream.

    ``streams`` is the session's live registry (looked up on the fast path);
    ``frame_limit`` the largest Data payload accepted. :meth:`feed` raises
    :class:`ProtocolError` on malformed input; :meth:`stop` ends parsing for good.
    """

    def __init__(
        self, handler: FrameHandler[_Sink], streams: Mapping[int, _Sink], frame_limit: int
    ) -> None:
        """Parse for ``handler``; nothing is buffered yet."""
        self._handler = handler
        self._streams = streams
        self._frame_limit = frame_limit
        self._hbuf = b""  # a header cut by the end of the previous read
        self._body_left = 0  # payload bytes of the current frame still to come
        self._body_sink: _Sink | None = None
        self._body_fin = False
        self._stopped = False
        #: frames parsed since the start (for stats)
        self.frames_received = 0

    @property
    def idle(self) -> bool:
        """True between frames (no partial header or payload pending)."""
        return not self._hbuf and not self._body_left

    def stop(self) -> None:
        """Drop any partial frame; later and remaining input is ignored."""
        self._stopped = True
        self._hbuf = b""
        self._body_left = 0
        self._body_sink = None

    def feed(self, data: bytes) -> None:
        """Parse ``data``, calling the handler (and the sinks) for each complete piece."""
        end = len(data)
        pos = 0
        if self._body_left:
            take = min(self._body_left, end)
            sink = self._body_sink
            if sink is not None:
                sink.feed_data(data if take == end else data[:take])
            self._body_left -= take
            pos = take
            if self._body_left:
                return
            self._body_sink = None
            if self._body_fin and sink is not None:
                self._handler.on_data_fin(sink)
        if self._hbuf:
            need = HEADER_SIZE - len(self._hbuf)
            if end - pos < need:
                self._hbuf += data[pos:]
                return
            header = self._hbuf + data[pos : pos + need]
            self._hbuf = b""
            version, kind, flags, stream_id, length = HEADER.unpack(header)
            pos = self._frame(version, kind, flags, stream_id, length, data, pos + need)
        unpack_from = HEADER.unpack_from
        streams = self._streams
        frame = self._frame
        while end - pos >= HEADER_SIZE and not self._stopped:
            version, kind, flags, stream_id, length = unpack_from(data, pos)
            pos += HEADER_SIZE
            if version == 0 and kind == DATA and not flags and length <= end - pos:
                # Fast path: plain data on an established stream, wholly in this read.
                sink = streams.get(stream_id)
                if sink is not None:
                    self.frames_received += 1
                    if length:
                        sink.receive_data(data[pos : pos + length])
                    pos += length
                    continue
            pos = frame(version, kind, flags, stream_id, length, data, pos)
        if pos < end and not self._stopped:
            self._hbuf = data[pos:]

    def _frame(  # noqa: PLR0917 - the five header fields, then where the payload is
        self,
        version: int,
        kind: int,
        flags: int,
        stream_id: int,
        length: int,
        data: bytes,
        pos: int,
    ) -> int:
        """Handle one frame whose payload (if any) starts at ``data[pos]``; return the new pos."""
        self.frames_received += 1
        if version != 0:
            raise ProtocolError(f"unsupported version {version}")
        handler = self._handler
        if kind == DATA:
            if length > self._frame_limit:
                raise ProtocolError(f"data frame of {length} bytes exceeds the frame limit")
            sink = handler.on_data_frame(flags, stream_id, length)
            end = len(data)
            avail = end - pos
            if length <= avail:
                if sink is not None:
                    if length:
                        sink.feed_data(data[pos : pos + length])
                    if flags & FIN:
                        handler.on_data_fin(sink)
                return pos + length
            if sink is not None and avail:
                sink.feed_data(data[pos:])
            self._body_left = length - avail
            self._body_sink = sink
            self._body_fin = bool(flags & FIN)
            return end
        if kind == WINDOW_UPDATE:
            handler.on_window_update(flags, stream_id, length)
        elif kind == PING:
            handler.on_ping(flags, length)
        elif kind == GO_AWAY:
            handler.on_go_away(length)
        else:
            raise ProtocolError(f"unknown frame type {kind}")
        return pos
