"""HTTP plumbing: the error handler, the OpenAPI error declarations, request context.

Every error leaves as ``{"error": {"code", "message"}}`` (422 adds ``fields``);
never a stack trace, driver message or SQL text.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
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

    async def on_sql(_request: Request, exc: Exception) -> JSONResponse:
        mapped = map_db_error(exc)
        if mapped is not None:
            return _json(mapped)
        _LOGGER.error("unmapped database error: %s", type(exc).__name__, exc_info=exc)
        return _json(AppError())

    async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
        _LOGGER.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return _json(AppError())

    app.add_exception_handler(AppError, on_app_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(SQLAlchemyError, on_sql)
    app.add_exception_handler(Exception, on_unexpected)


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
        rid = _incoming_request_id(scope) or uuid.uuid4().hex
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500
        path: str = scope.get("path", "")

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            limited = not self._unlimited(path)
            if limited and _content_length(scope) > self._max:
                await _send_error(send_wrapper, PayloadTooLargeError())
                return
            await self._app(
                scope, _limited(receive, self._max) if limited else receive, send_wrapper
            )
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self._metrics.requests.labels(method, template, str(status)).inc()
            self._metrics.latency.labels(method, template).observe(elapsed)
            _ACCESS.info("%s %s %s %.1fms", method, path, status, elapsed * 1000)
            request_id_var.reset(token)


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


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapper() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLargeError()
        return message

    return wrapper


async def _send_error(send: Send, err: AppError) -> None:
    response = _json(err)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})
