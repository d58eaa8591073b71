"""Wire format of hashicorp/yamux: the 12-byte header and its constants.

Every frame starts with a big-endian header::

    +---------+------+-------+-----------+--------+
    | version | type | flags | stream id | length |
    |  uint8  | u8   | u16   |   u32     |  u32   |
    +---------+------+-------+-----------+--------+

``version`` is always 0. Only Data frames are followed by ``length`` payload bytes;
for WindowUpdate ``length`` is a window delta, for Ping an opaque value echoed back,
for GoAway an error code.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

PROTO_VERSION = 0
HEADER_SIZE = 12
INITIAL_STREAM_WINDOW = 256 * 1024
MAX_STREAM_ID = 0xFFFFFFFF
MAX_WINDOW = 0xFFFFFFFF

HEADER = struct.Struct(">BBHII")

#: What may be written: immutable ``bytes`` are queued by reference, the rest copied.
Buffer = bytes | bytearray | memoryview


class FrameType(enum.IntEnum):
    """The four frame types."""

    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(enum.IntFlag):
    """Flags carried by Data and WindowUpdate frames (SYN/ACK also by Ping)."""

    NONE = 0
    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


class GoAwayCode(enum.IntEnum):
    """The ``length`` field of a GoAway frame."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


# Plain ints for the hot path (attribute lookups on enums are slow).
DATA = 0
WINDOW_UPDATE = 1
PING = 2
GO_AWAY = 3
SYN = 1
ACK = 2
FIN = 4
RST = 8


class Header(NamedTuple):
    """A decoded frame header."""

    version: int
    type: int
    flags: int
    stream_id: int
    length: int


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """Return the 12 header bytes for one frame (version 0)."""
    return HEADER.pack(PROTO_VERSION, frame_type, flags, stream_id, length)


def decode_header(data: Buffer, offset: int = 0) -> Header:
    """Decode the 12 header bytes at ``offset`` (no validation)."""
    return Header(*HEADER.unpack_from(data, offset))


def describe(header: Header) -> str:
    """Return a short human-readable form of ``header`` for log lines."""
    try:
        kind = FrameType(header.type).name
    except ValueError:
        kind = f"type{header.type}"
    return (
        f"v{header.version} {kind} flags={Flag(header.flags & 0xF)!s} "
        f"stream={header.stream_id} length={header.length}"
    )
