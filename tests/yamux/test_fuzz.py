"""Property test: random and mutated frame sequences never escape the session.

Whatever the peer sends, feeding it to a session never raises; the session either
stays consistent (no stream buffers more than its window) or ends with
GoAway(protocol error) after exactly one log line, keeping no stream, buffer, timer
or task.
"""

from __future__ import annotations

import asyncio
import logging

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.yamux import MemoryTransport, parse_frames
from visiona.yamux import Config, ProtocolError, RemoteGoAwayError, Session
from visiona.yamux.frames import (
    DATA,
    FIN,
    GO_AWAY,
    HEADER,
    PING,
    RST,
    SYN,
    WINDOW_UPDATE,
    GoAwayCode,
)

CONFIG = Config(max_stream_window=256 * 1024, max_streams=16, enable_keepalive=False)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame, mostly plausible, sometimes wild."""
    kind = draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]) | st.integers(0, 255))
    flags = draw(st.sampled_from([0, 1, 2, 4, 8, 1 | 4, 2 | 4]) | st.integers(0, 0xFFFF))
    stream_id = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 9]) | st.integers(0, 2**32 - 1))
    version = draw(st.sampled_from([0] * 20 + [1]) | st.integers(0, 255))
    if kind == 0:
        payload = draw(st.binary(max_size=300))
        length = draw(st.just(len(payload)) | st.integers(0, 2**32 - 1))
        if length > len(payload) + 600_000:
            payload = b""
        elif length > len(payload):
            payload += b"\0" * (length - len(payload))
        return HEADER.pack(version, kind, flags, stream_id, length) + payload[:length]
    length = draw(st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 2, 1024]))
    return HEADER.pack(version, kind, flags, stream_id, length)


@st.composite
def plausible(draw: st.DrawFn, *, client: bool) -> bytes:
    """A sequence a sane peer could send: opens, data within the window, FIN, RST, pings."""
    next_id = 2 if client else 1  # the peer's parity
    opened: list[int] = []
    sent: dict[int, int] = {}
    out = []
    for _ in range(draw(st.integers(0, 30))):
        op = draw(st.sampled_from(["open", "data", "data", "window", "fin", "rst", "ping"]))
        if op == "open" or not opened:
            opened.append(next_id)
            sent[next_id] = 0
            out.append(HEADER.pack(0, WINDOW_UPDATE, SYN, next_id, 0))
            next_id += 2
            continue
        sid = draw(st.sampled_from(opened))
        if op == "data":
            size = draw(st.integers(0, 70_000))
            size = min(size, CONFIG.max_stream_window - sent[sid])
            sent[sid] += size
            flags = draw(st.sampled_from([0, 0, 0, FIN]))
            out.append(HEADER.pack(0, DATA, flags, sid, size) + bytes(size))
            if flags:
                opened.remove(sid)
        elif op == "window":
            out.append(HEADER.pack(0, WINDOW_UPDATE, 0, sid, draw(st.integers(0, 1 << 20))))
        elif op in ("fin", "rst"):
            out.append(HEADER.pack(0, WINDOW_UPDATE, FIN if op == "fin" else RST, sid, 0))
            opened.remove(sid)
        else:
            out.append(HEADER.pack(0, PING, SYN, 0, draw(st.integers(0, 2**32 - 1))))
    return b"".join(out)


@st.composite
def wire(draw: st.DrawFn) -> tuple[bytes, list[int], bool]:
    """A frame sequence (wild or plausible, maybe mutated) and where to split it."""
    client = draw(st.booleans())
    if draw(st.booleans()):
        raw = bytearray(b"".join(draw(st.lists(frames(), max_size=25))))
    else:
        raw = bytearray(draw(plausible(client=client)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        if raw:
            index = draw(st.integers(0, len(raw) - 1))
            raw[index] = draw(st.integers(0, 255))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(raw)), max_size=8))))
    return bytes(raw), cuts, client


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sample=wire(), accept=st.booleans())
async def test_random_frames_never_escape_the_session(
    sample: tuple[bytes, list[int], bool], accept: bool
):
    raw, cuts, client = sample
    logger = logging.getLogger("visiona.yamux")
    records = _Records()
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    tasks_before = asyncio.all_tasks()
    transport = MemoryTransport()
    try:
        session = Session(transport, client=client, config=CONFIG)
        start = 0
        for cut in [*cuts, len(raw)]:
            transport.feed(raw[start:cut])  # raises into the test if anything escapes
            start = cut
            if accept:
                while session._registry.accept_queue and not session.is_closed:
                    stream = await session.accept_stream()
                    await stream.read(100) if stream.buffered else None
        warnings = [r for r in records.records if r.levelno >= logging.WARNING]
        assert not [r for r in warnings if r.levelno >= logging.ERROR], "internal error"
        event(f"ended: {type(session.close_reason).__name__}" if session.is_closed else "open")
        if session.is_closed:
            reason = session.close_reason
            assert isinstance(reason, ProtocolError | RemoteGoAwayError), reason
            if isinstance(reason, ProtocolError):
                last_header, _ = parse_frames(bytes(transport.sent))[-1]
                assert (last_header.type, last_header.length) == (
                    GO_AWAY,
                    GoAwayCode.PROTOCOL_ERROR,
                )
                assert len(warnings) == 1
            assert transport.is_closed
            assert session.num_streams == 0
            assert not session._registry.accept_queue
            assert session._writer.idle
            assert session._parser.idle
        else:
            assert not warnings
            for stream in session._registry.streams.values():
                # Never more buffered than the window we granted.
                assert stream.buffered + stream._recv_window <= CONFIG.max_stream_window
        await session.close()
        await asyncio.sleep(0)
        assert session.num_streams == 0
        assert not session._pings.keepalive_armed
        assert session._abort_handle is None  # the transport reported its end
        assert asyncio.all_tasks() <= tasks_before | {asyncio.current_task()}
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
