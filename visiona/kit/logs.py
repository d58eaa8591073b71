"""Logging set-up: text or JSON lines, each carrying the request id when there is one.

Nothing logged here carries tokens, passwords or DSNs: callers log targets as
``host:port/db`` and never log request headers or query strings.

Log forging: whatever came from outside (a request path, a user agent, a device name, a
serial, an agent's message, an exception's text) may hold CR, LF, NUL, ESC, U+2028 or
another control character. One place escapes them for every handler and both formats:
the log record class (:func:`install_safe_records`), whose ``getMessage`` returns the
message with each such character written as ``\\n``, ``\\x1b``, ``\\u2028`` ... so a
log line is always one line, and a terminal never sees a raw escape sequence. Tracebacks
keep their line structure, but their control characters are escaped and every line of
them is indented, so no text inside an exception can start a line of its own.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("visiona_request_id", default=None)
#: The calling client's address (after trusted proxy headers), set per HTTP request
#: beside the request id; the audit trail records both.
client_addr_var: ContextVar[str | None] = ContextVar("visiona_client_addr", default=None)
#: Set by an ASGI call that ends without a complete response on purpose.
_incomplete_on_purpose: ContextVar[bool] = ContextVar("visiona_incomplete", default=False)
#: What uvicorn logs (ERROR) when an ASGI call ends that way.
_UVICORN_INCOMPLETE = frozenset(
    {
        "ASGI callable returned without completing handshake.",
        "ASGI callable returned without completing response.",
    }
)

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "request_id",
}


#: C0 controls, DEL, C1 controls, the Unicode line and paragraph separators and the
#: bidirectional overrides/isolates (text that reads differently than it is stored).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """``text`` with every control or line-breaking character written as an escape."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape_char, text)


def _escape_block(text: str) -> str:
    """A multi-line block (a traceback): lines kept, each escaped and indented."""
    return "\n".join("  " + escape_control(line) for line in text.split("\n"))


class SafeLogRecord(logging.LogRecord):
    """A log record whose message (format string and arguments) has its controls escaped."""

    def getMessage(self) -> str:  # noqa: N802 - overrides logging's name
        """The formatted message with control characters escaped."""
        return escape_control(super().getMessage())


def install_safe_records() -> None:
    """Make every log record a :class:`SafeLogRecord` (idempotent).

    Done through the record factory, so every handler (ours, uvicorn's, pytest's) and
    every formatter gets escaped messages. A factory installed by someone else is kept:
    its records are given the escaping ``getMessage`` too.
    """
    current = logging.getLogRecordFactory()
    if current is SafeLogRecord or getattr(current, "_visiona_safe", False):
        return
    if current is logging.LogRecord:
        logging.setLogRecordFactory(SafeLogRecord)
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        if not isinstance(record, SafeLogRecord):
            plain = record.getMessage
            record.getMessage = lambda: escape_control(plain())  # type: ignore[method-assign]  # per-record escaping for a foreign record class
        return record

    factory._visiona_safe = True  # type: ignore[attr-defined]  # marker for idempotence
    logging.setLogRecordFactory(factory)


class _SafeBlocksMixin(logging.Formatter):
    """Tracebacks and stack dumps with controls escaped and continuation lines indented."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - overrides logging's name
        """The traceback, made safe by :func:`_escape_block`."""
        return _escape_block(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - overrides logging's name
        """The stack dump, made safe by :func:`_escape_block`."""
        return _escape_block(super().formatStack(stack_info))


class TextFormatter(_SafeBlocksMixin):
    """``time level logger [request id] message``, one line (plus an indented traceback)."""

    def __init__(self) -> None:
        """Use the project's text format."""
        super().__init__(_TEXT_FORMAT)


#: HTTP and WebSocket client libraries that log each request's full URL (query string
#: included, which may carry a device credential) at INFO or below: kept at WARNING.
CLIENT_LOGGERS = ("httpx", "httpcore", "h11", "hpack", "urllib3", "websockets", "botocore")


def quiet_client_loggers() -> None:
    """Keep third-party request loggers at WARNING whatever the root level (idempotent).

    The server logs one access line per request (path without query string) itself;
    httpx's ``HTTP Request: GET http://node/...?query`` line on a forwarding node would
    be a second line per request, and carry the query string.
    """
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(_SafeBlocksMixin):
    """One JSON object per line: time, level, logger, message, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        payload.update(
            {
                key: escape_control(value) if isinstance(value, str) else value
                for key, value in record.__dict__.items()
                if key not in _STD_ATTRS and not key.startswith("_")
            }
        )
        if record.exc_info:
            payload["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def end_incomplete_on_purpose() -> None:
    """Mark the current ASGI call as ending without a complete response, deliberately.

    Two cases: a refused WebSocket upgrade (uvicorn's websockets-sansio server takes the
    denial response for a missing handshake) and a proxied response cut off because
    its tunnel dropped (returning without completing it is the only way ASGI has to
    abort a response). uvicorn's ERROR line about it is then dropped; the caller logs
    its own line. The mark lives in the call's context, so it never covers another
    request.
    """
    _incomplete_on_purpose.set(True)


class _DeliberateIncompleteFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_incomplete_on_purpose.get() and record.msg in _UVICORN_INCOMPLETE)


_INCOMPLETE_FILTER = _DeliberateIncompleteFilter()


def install_server_log_filters() -> None:
    """Drop uvicorn's false alarms for calls marked by :func:`end_incomplete_on_purpose`,
    escape control characters in every log record (:func:`install_safe_records`) and keep
    client libraries' request loggers quiet (:func:`quiet_client_loggers`).

    Idempotent; called by the application factory so that every way of serving the
    app (``visiona serve``, tests) gets it.
    """
    install_safe_records()
    quiet_client_loggers()
    logger = logging.getLogger("uvicorn.error")
    if _INCOMPLETE_FILTER not in logger.filters:
        logger.addFilter(_INCOMPLETE_FILTER)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    install_safe_records()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_visiona", False):
            root.removeHandler(old)
    handler._visiona = True  # type: ignore[attr-defined]  # marker to replace our own handler
    root.addHandler(handler)
    root.setLevel(level)
    quiet_client_loggers()
    # uvicorn's access log prints query strings, which may carry secrets: ours replaces it.
    logging.getLogger("uvicorn.access").disabled = True
