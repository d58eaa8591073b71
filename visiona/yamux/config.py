"""Tunables of a yamux session, with hashicorp/yamux's defaults."""

from __future__ import annotations

import dataclasses

from .frames import INITIAL_STREAM_WINDOW, MAX_WINDOW


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """Settings of one :class:`~visiona.yamux.Session` (immutable; validated on creation).

    The defaults follow hashicorp/yamux. For bulk transfers raise
    ``max_stream_window`` (4-16 MiB): the 256 KiB default caps one stream at one
    window per round trip.
    """

    #: streams the peer opened that wait for :meth:`Session.accept_stream`; more are reset.
    #: Also the number of our own opens that may wait for the peer's ACK at once.
    accept_backlog: int = 256
    #: answer every stream the peer opens with RST at once (for a side that never
    #: accepts streams: nothing of such a stream is kept, so a hostile peer costs O(1)).
    refuse_streams: bool = False
    #: send a ping every ``keepalive_interval`` seconds and end the session when unanswered.
    enable_keepalive: bool = True
    keepalive_interval: float = 30.0
    #: how long a keepalive (or :meth:`Session.ping`) may wait for its answer.
    keepalive_timeout: float = 10.0
    #: the receive window we grant each stream (the peer's send credit); >= 256 KiB.
    max_stream_window: int = INITIAL_STREAM_WINDOW
    #: largest Data frame accepted from the peer; ``None`` means ``max_stream_window``.
    #: hashicorp peers send up to their whole credit in one frame, so a value below
    #: ``max_stream_window`` breaks interop; it exists to bound frames for closed streams.
    max_frame_size: int | None = None
    #: largest Data frame we send (bigger writes are split).
    send_frame_size: int = 256 * 1024
    #: streams that may be open at once (both directions); a SYN beyond is a protocol error.
    max_streams: int = 8192
    #: seconds an opened stream may wait for the peer's ACK before it is reset.
    open_timeout: float = 30.0
    #: a stream's ``drain()`` returns once at most this many bytes wait for send credit.
    write_buffer_high: int = 64 * 1024
    #: seconds :meth:`Session.close` waits for the transport to flush before aborting.
    close_timeout: float = 5.0

    def __post_init__(self) -> None:
        """Reject settings that cannot work."""
        if self.accept_backlog <= 0:
            raise ValueError("accept_backlog must be positive")
        if self.keepalive_interval <= 0 or self.keepalive_timeout <= 0:
            raise ValueError("keepalive interval and timeout must be positive")
        if not INITIAL_STREAM_WINDOW <= self.max_stream_window <= MAX_WINDOW:
            raise ValueError(f"max_stream_window must be in [{INITIAL_STREAM_WINDOW}, 2**32)")
        if self.max_frame_size is not None and self.max_frame_size <= 0:
            raise ValueError("max_frame_size must be positive")
        if self.send_frame_size <= 0:
            raise ValueError("send_frame_size must be positive")
        if self.max_streams <= 0:
            raise ValueError("max_streams must be positive")
        if self.open_timeout <= 0 or self.close_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.write_buffer_high < 0:
            raise ValueError("write_buffer_high must not be negative")

    @property
    def frame_limit(self) -> int:
        """The largest Data frame accepted from the peer."""
        return self.max_frame_size if self.max_frame_size is not None else self.max_stream_window
