"""Logging set-up: text or JSON lines, each carrying the request id when there is one.

Nothing logged here carries tokens, passwords or DSNs: callers log targets as
``host:port/db`` and never log request headers or query strings.
"""

from __future__ import annotations

import json
import logging
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


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
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
                key: value
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
    """Drop uvicorn's false alarms for calls marked by :func:`end_incomplete_on_purpose`.

    Idempotent; called by the application factory so that every way of serving the
    app (``visiona serve``, tests) gets it.
    """
    logger = logging.getLogger("uvicorn.error")
    if _INCOMPLETE_FILTER not in logger.filters:
        logger.addFilter(_INCOMPLETE_FILTER)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_visiona", False):
            root.removeHandler(old)
    handler._visiona = True  # type: ignore[attr-defined]  # marker to replace our own handler
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's access log prints query strings, which may carry secrets: ours replaces it.
    logging.getLogger("uvicorn.access").disabled = True
