"""A hashicorp/yamux-compatible stream multiplexer for asyncio.

Standalone (imports nothing else of the project). One :class:`Session` runs over a
byte transport (TCP via :func:`open_tcp_session`/:func:`serve_tcp`, a stream pair, or a
WebSocket through :class:`FeedTransport` or, when its send never blocks,
:class:`MessageTransport`) and carries many :class:`Stream` objects,
each an asyncio-style reader/writer with half-close and credit flow control. The wire
format is described in ``docs/tunnel-protocol.md``.
"""

from .config import Config
from .errors import (
    KeepAliveTimeoutError,
    OpenTimeoutError,
    PingTimeoutError,
    ProtocolError,
    RemoteGoAwayError,
    SessionClosedError,
    StreamClosedError,
    StreamResetError,
    StreamsExhaustedError,
    YamuxError,
)
from .frames import Flag, FrameType, GoAwayCode
from .message import MessageTransport
from .session import Session, SessionStats
from .stream import Stream
from .tcp import open_tcp_session, serve_tcp
from .transport import (
    ByteTransport,
    FeedTransport,
    StreamPairTransport,
    TcpTransport,
    TransportSink,
)

__all__ = [
    "ByteTransport",
    "Config",
    "FeedTransport",
    "Flag",
    "FrameType",
    "GoAwayCode",
    "KeepAliveTimeoutError",
    "MessageTransport",
    "OpenTimeoutError",
    "PingTimeoutError",
    "ProtocolError",
    "RemoteGoAwayError",
    "Session",
    "SessionClosedError",
    "SessionStats",
    "Stream",
    "StreamClosedError",
    "StreamPairTransport",
    "StreamResetError",
    "StreamsExhaustedError",
    "TcpTransport",
    "TransportSink",
    "YamuxError",
    "open_tcp_session",
    "serve_tcp",
]
