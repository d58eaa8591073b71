"""Exceptions raised by the yamux session and its streams.

Everything derives from :class:`YamuxError`, so callers can catch the whole family
with one clause. Errors that mirror an OS-level condition also derive from the
matching built-in (``ConnectionResetError``, ``TimeoutError``...) so that ordinary
protocol code written against asyncio streams handles them without knowing yamux.
"""

from __future__ import annotations


class YamuxError(Exception):
    """Root of every error raised by this package."""


class ProtocolError(YamuxError):
    """The peer broke the yamux protocol; the session ends with GoAway(protocol error)."""


class SessionClosedError(YamuxError, ConnectionError):
    """The session is closed (or closing), so the operation cannot proceed."""


class RemoteGoAwayError(YamuxError):
    """The peer sent a GoAway: with code 0 it accepts no new streams, otherwise it failed.

    ``code`` is the GoAway code the peer sent (see :class:`~visiona.yamux.frames.GoAwayCode`).
    """

    def __init__(self, code: int, message: str | None = None) -> None:
        """Remember the peer's GoAway ``code``."""
        super().__init__(message or f"peer sent GoAway (code {code})")
        self.code = code


class KeepAliveTimeoutError(YamuxError, TimeoutError):
    """A keepalive ping was not answered in time; the session is considered dead."""


class PingTimeoutError(YamuxError, TimeoutError):
    """An explicit :meth:`Session.ping` was not answered in time."""


class OpenTimeoutError(YamuxError, TimeoutError):
    """A stream we opened was not acknowledged (or could not be opened) in time."""


class StreamsExhaustedError(YamuxError):
    """Every stream id of our parity has been used; open a new session."""


class StreamResetError(YamuxError, ConnectionResetError):
    """The stream was reset (by the peer, by us, or because it could not be opened)."""


class StreamClosedError(YamuxError, BrokenPipeError):
    """Writing to a stream whose write side is already closed (after ``write_eof``/``close``)."""
