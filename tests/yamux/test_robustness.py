"""Malformed input from the peer ends the session cleanly: GoAway(protocol error), one log line."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from tests.support.yamux import RawFactory, data, frame, loop_errors, read_until
from visiona.yamux import Config, ProtocolError, Session, Stream, YamuxError, serve_tcp
from visiona.yamux.frames import DATA, FIN, GO_AWAY, HEADER, PING, SYN, WINDOW_UPDATE, GoAwayCode

KIB = 1024

# name -> (config, bytes the peer sends); the session is the server (even ids).
CASES: dict[str, tuple[Config | None, bytes]] = {
    "bad_version": (None, HEADER.pack(1, DATA, 0, 1, 0)),
    "unknown_type": (None, frame(4, 0, 0, 0)),
    "length_over_the_frame_limit": (
        Config(max_frame_size=1000),
        frame(DATA, SYN, 1, 2000) + b"x" * 2000,
    ),
    "duplicate_stream_id": (None, frame(WINDOW_UPDATE, SYN, 1, 0) * 2),
    "unknown_stream_id": (None, data(5, b"never opened")),
    "window_overrun": (
        None,
        frame(WINDOW_UPDATE, SYN, 1, 0) + data(1, b"a" * 200 * KIB) + data(1, b"b" * 100 * KIB),
    ),
    "syn_past_the_stream_limit": (
        Config(max_streams=2),
        b"".join(frame(WINDOW_UPDATE, SYN, sid, 0) for sid in (1, 3, 5)),
    ),
    "syn_with_the_wrong_parity": (None, frame(WINDOW_UPDATE, SYN, 2, 0)),
    "stream_id_zero": (None, data(0, b"nobody")),
    "data_after_fin": (None, data(1, b"last", SYN | FIN) + data(1, b"more")),
    "second_fin": (None, frame(WINDOW_UPDATE, SYN | FIN, 1, 0) + frame(WINDOW_UPDATE, FIN, 1, 0)),
    "window_overflow": (
        None,
        frame(WINDOW_UPDATE, SYN, 1, 0) + frame(WINDOW_UPDATE, 0, 1, 2**32 - 1),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_malformed_input_ends_session_with_protocol_error(
    make_raw: RawFactory, caplog: pytest.LogCaptureFixture, case: str
):
    config, payload = CASES[case]
    session, reader, writer = await make_raw(config)
    with loop_errors() as errors, caplog.at_level(logging.DEBUG, logger="visiona.yamux"):
        writer.write(frame(PING, SYN, 0, 42) + payload)
        header, _ = await read_until(reader, GO_AWAY)
        assert header.length == GoAwayCode.PROTOCOL_ERROR
        async with asyncio.timeout(10):
            # Then the connection is closed (reset when our unread bytes were pending).
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        await session.closed.wait()
    assert isinstance(session.close_reason, ProtocolError)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "protocol error" in warnings[0].getMessage()
    assert errors == []
    assert session.num_streams == 0
    assert not session._registry.accept_queue


async def test_window_overrun_ends_session_with_protocol_error(make_raw: RawFactory):
    session, reader, writer = await make_raw(Config(max_stream_window=512 * KIB))
    # The peer may use our advertised window (512 KiB) but not a byte more.
    writer.write(frame(WINDOW_UPDATE, SYN, 1, 0))
    stream = await session.accept_stream()
    writer.write(data(1, b"a" * 512 * KIB))
    assert len(await stream.readexactly(512 * KIB)) == 512 * KIB
    # Whatever credit went back by now (its timing is the session's), the window is at
    # most 512 KiB again and nobody reads on: one byte more overruns it.
    writer.write(data(1, b"b" * 256 * KIB) + data(1, b"c" * (256 * KIB + 1)))
    header, _ = await read_until(reader, GO_AWAY)
    assert header.length == GoAwayCode.PROTOCOL_ERROR
    await session.closed.wait()
    assert "overran its window" in str(session.close_reason)


async def test_peer_go_away_with_an_error_code_ends_the_session(make_raw: RawFactory):
    session, _, writer = await make_raw()
    writer.write(frame(GO_AWAY, 0, 0, GoAwayCode.INTERNAL_ERROR))
    await session.closed.wait()
    reason = session.close_reason
    assert reason is not None
    assert getattr(reason, "code", None) == GoAwayCode.INTERNAL_ERROR


async def test_frames_for_a_stream_we_reset_are_dropped_quietly(
    make_raw: RawFactory, caplog: pytest.LogCaptureFixture
):
    session, reader, writer = await make_raw()
    writer.write(frame(WINDOW_UPDATE, SYN, 1, 0))
    stream = await session.accept_stream()
    stream.reset()
    with caplog.at_level(logging.WARNING, logger="visiona.yamux"):
        writer.write(data(1, b"in flight") + frame(WINDOW_UPDATE, FIN, 1, 0))
        writer.write(frame(PING, SYN, 0, 7))
        header, _ = await read_until(reader, PING)
    assert header.length == 7
    assert not session.is_closed
    assert caplog.records == []


async def test_an_internal_failure_ends_the_session_with_go_away_internal_error(
    make_raw: RawFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    def broken(self: Stream, payload: bytes) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(Stream, "feed_data", broken)
    session, reader, writer = await make_raw()
    with loop_errors() as errors, caplog.at_level(logging.WARNING, logger="visiona.yamux"):
        writer.write(data(1, b"payload", SYN))
        header, _ = await read_until(reader, GO_AWAY)
        await session.closed.wait()
    assert header.length == GoAwayCode.INTERNAL_ERROR
    assert isinstance(session.close_reason, YamuxError)
    assert isinstance(session.close_reason.__cause__, RuntimeError)
    assert len(caplog.records) == 1
    assert errors == []


async def test_a_failing_tcp_session_handler_ends_the_session_with_go_away_internal_error(
    caplog: pytest.LogCaptureFixture,
):
    sessions: list[Session] = []

    def broken(session: Session) -> None:
        sessions.append(session)
        raise RuntimeError("handler bug")

    server = await serve_tcp(broken, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with caplog.at_level(logging.ERROR, logger="visiona.yamux"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            header, _ = await read_until(reader, GO_AWAY)
            writer.close()
        assert header.length == GoAwayCode.INTERNAL_ERROR
        assert sessions[0].is_closed
        assert sessions[0].close_reason is None  # a local decision, not a peer's fault
        assert [r.getMessage() for r in caplog.records] == ["yamux: session handler failed"]
    finally:
        server.close()
