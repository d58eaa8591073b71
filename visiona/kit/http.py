"""HTTP plumbing: the error handler, the OpenAPI error declarations, request context.

Every error leaves as ``{"error": {"code", "message"}}`` (422 adds ``fields``);
never a stack trace, driver message or SQL text.
"""

from __future__ import annotations

import logging
import os
import re
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visiona.kit.database import map_db_error
from visiona.kit.errors import (
    AppError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ValidationFailedError,
)
from visiona.kit.logs import request_id_var

if TYPE_CHECKING:
    from visiona.kit.metrics import Metrics

_LOGGER = logging.getLogger(__name__)
_ACCESS = logging.getLogger("visiona.access")
_PACKAGE = "visiona"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ErrorDetail(BaseModel):
    """The error object."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error response has this shape."""

    error: ErrorDetail


def error_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given errors (codes grouped by status)."""
    by_status: dict[int, list[str]] = {}
    for err in errors:
        by_status.setdefault(err.status_code, []).append(err.code)
    return {
        status: {"model": ErrorBody, "description": "Error codes: " + ", ".join(sorted(codes))}
        for status, codes in sorted(by_status.items())
    }


def _json(err: AppError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """Register the one error renderer for every kind of failure."""

    async def on_app_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AppError)  # noqa: S101 - registered for AppError only
        return _json(exc)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it only
        fields = [
            {
                "loc": [str(part) for part in err.get("loc", ())],
                "message": str(err.get("msg", "invalid")),
                "type": str(err.get("type", "invalid")),
            }
            for err in exc.errors()
        ]
        return _json(ValidationFailedError(fields))

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for it only
        if exc.status_code == 404:
            return _json(NotFoundError())
        if exc.status_code == 405:
            return _json(MethodNotAllowedError())
        if exc.status_code == 413:
            return _json(PayloadTooLargeError())
        err = AppError(str(exc.detail) if exc.detail else "HTTP error.")
        return JSONResponse(
            {"error": {"code": "http_error", "message": err.message}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_sql(request: Request, exc: Exception) -> JSONResponse:
        mapped = map_db_error(exc)
        if mapped is not None:
            return _json(mapped)
        _log_failure("unmapped database error", request, exc)
        return _json(AppError())

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log_failure("unhandled error", request, exc)
        return _json(AppError())

    app.add_exception_handler(AppError, on_app_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(SQLAlchemyError, on_sql)
    app.add_exception_handler(Exception, on_unexpected)


def _log_failure(what: str, request: Request, exc: BaseException) -> None:
    """One ERROR line: the exception type, the route and where it was raised.

    Never the exception's text nor a traceback with messages: a driver error's text
    carries the statement and its parameters (an email, a password hash), and other
    exceptions may quote the input. The request id is added by the log filter.
    """
    _LOGGER.error(
        "%s: %s on %s %s at %s",
        what,
        type(exc).__name__,
        request.method,
        _route_template(request.scope),
        _raised_at(exc),
    )


def _raised_at(exc: BaseException, depth: int = 3) -> str:
    """Where ``exc`` was raised: the innermost ``depth`` frames of this package, or of any."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if f"{_PACKAGE}{os.sep}" in frame.filename]
    chosen = (ours or frames)[-depth:]
    where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(chosen)]
    return " < ".join(where) or "unknown"


class RequestContextMiddleware:
    """Request id, body-size limit, metrics by route template and one access-log line."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        unlimited: Callable[[str], bool] = lambda _path: False,
    ) -> None:
        """Wrap ``app``; paths for which ``unlimited(path)`` is true bring their own limit."""
        self._app = app
        self._metrics = metrics
        self._max = max_body_bytes
        self._unlimited = unlimited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = None if self._unlimited(path) else self._max
        exchange = _Exchange(receive, send, _incoming_request_id(scope) or uuid.uuid4().hex, limit)
        token = request_id_var.set(exchange.request_id)
        started = time.perf_counter()
        try:
            if limit is not None and _content_length(scope) > limit:
                exchange.too_large = True
            else:
                try:
                    await self._app(scope, exchange.receive, exchange.send)
                except Exception:
                    if not exchange.too_large:
                        raise
            if exchange.too_large and not exchange.started:
                exchange.status = PayloadTooLargeError.status_code
                await _send_error(send, PayloadTooLargeError(), exchange.request_id)
        finally:
            elapsed = time.perf_counter() - started
            template = _route_template(scope)
            method = scope.get("method", "")
            self._metrics.observe_request(method, template, exchange.status, elapsed)
            _ACCESS.info("%s %s %s %.1fms", method, path, exchange.status, elapsed * 1000)
            request_id_var.reset(token)


class _Exchange:
    """One request's receive/send wrappers: body limit, status capture, request-id header."""

    def __init__(self, receive: Receive, send: Send, request_id: str, limit: int | None) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._seen = 0
        self.request_id = request_id
        self.status = 500
        self.started = False
        self.too_large = False

    async def receive(self) -> Message:
        if self.too_large:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if self._limit is not None and message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                # Stop the app reading; the middleware answers 413 whatever the app does.
                self.too_large = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.too_large:
            return
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.started = True
            headers = [*message.get("headers", []), (b"x-request-id", self.request_id.encode())]
            message = {**message, "headers": headers}
        await self._send(message)


def _route_template(scope: Scope) -> str:
    """The matched route's template (``/api/v1/devices/{device_id}``), never the raw path."""
    fastapi_scope = scope.get("fastapi")
    context = (
        fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    )
    path = getattr(context, "path", None) or getattr(scope.get("route"), "path", None)
    return str(path) if path else "unmatched"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.match(text) else None
    return None


def _content_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


async def _send_error(send: Send, err: AppError, request_id: str) -> None:
    response = _json(err)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [*response.raw_headers, (b"x-request-id", request_id.encode())],
        }
    )
    await send({"type": "http.response.body", "body": response.body})
