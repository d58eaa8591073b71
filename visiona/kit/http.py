"""HTTP plumbing: the error handlers, the OpenAPI error declarations, and the edge — the
one ASGI layer in front of the router (:class:`Edge`, installed by :func:`install_edge`).

Every error leaves as ``{"error": {"code", "message"}}`` (422 adds ``fields``);
never a stack trace, driver message or SQL text.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.exceptions import WebSocketException
from starlette.responses import Response
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from visiona.kit.database import map_db_error
from visiona.kit.errors import (
    AppError,
    BadRequestError,
    ForbiddenError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnauthorizedError,
    ValidationFailedError,
)
from visiona.kit.logs import client_addr_var, request_id_var

#: Headers of one connection, never relayed by a proxy (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


if TYPE_CHECKING:
    from visiona.kit.metrics import Metrics

_LOGGER = logging.getLogger(__name__)
_ACCESS = logging.getLogger("visiona.access")
_PACKAGE = "visiona"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: An exception handler as the app registers them (every one of the service's is async).
Handler = Callable[[Any, Exception], Awaitable[Response | None]]


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


class _UnparsableBodyError(BadRequestError):
    """FastAPI could not parse the body: not UTF-8, nested too deep, a number too long."""

    default_message = (
        "The request body could not be parsed (not UTF-8, nested too deep, or a number too long)."
    )


_FRAMEWORK_ERRORS: dict[int, type[AppError]] = {
    400: _UnparsableBodyError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    413: PayloadTooLargeError,
}


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route answers for the request's path, sorted; [] if unknown.

    Starlette answers 405 with the ``Allow`` of the first route whose path matched;
    a path served by several routes (``GET`` and ``POST /models``) needs all of them.
    Each method is tried against the routes with their public ``matches``, so included
    routers count too. A mounted sub-application (``/static``) matches every method:
    its own 405 and ``Allow`` stand.
    """
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Mount) and route.matches(request.scope)[0] is not Match.NONE:
            return []
        for method in _METHODS:
            if method not in methods:
                match, _child = route.matches({**request.scope, "method": method})
                if match is Match.FULL:
                    methods.add(method)
    return sorted(methods)


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

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        # The framework's own HTTP errors (routing, body parsing) get documented codes.
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for it only
        if exc.status_code == 405:
            response = _json(MethodNotAllowedError())
            response.headers.update(getattr(exc, "headers", None) or {})
            allowed = _allowed_methods(request)
            if allowed:  # every route of the path, not only the first Starlette tried
                response.headers["Allow"] = ", ".join(allowed)
            return response
        known = _FRAMEWORK_ERRORS.get(exc.status_code)
        if known is not None:
            return _json(known())
        err = BadRequestError() if exc.status_code < 500 else AppError()
        return JSONResponse(
            err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None)
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


class _HeadBodyDroppedError(Exception):
    """Raised into a streaming GET handler once HEAD has sent its headers."""


#: What the route's own exception wrapping (Starlette's ``request_response``) finds in
#: the scope; FastAPI's ``ExceptionMiddleware`` used to put it there.
_HANDLERS_KEY = "starlette.exception_handlers"
#: FastAPI's request handler asserts this stack (it closes uploaded files with it).
_FILE_STACK_KEY = "fastapi_middleware_astack"


async def _close_websocket(websocket: WebSocket, exc: Exception) -> None:
    """Starlette's answer to a :class:`WebSocketException`: close with its code."""
    assert isinstance(exc, WebSocketException)  # noqa: S101 - registered for it only
    await websocket.close(code=exc.code, reason=exc.reason)


class Edge:
    """The one ASGI layer between the server and the router (issue 26).

    Per HTTP request: the request id (echoed when safe, else new) and the log context,
    the body-size limit and the body-read timeout, ``HEAD`` run as ``GET`` with its
    body dropped (a 405's ``Allow`` gains HEAD), a ``Date`` where the app set none,
    the error envelope for whatever escapes the routes (the router's 404 and 405, an
    unexpected exception as a 500 without internals), metrics by route template and one
    access-log line. The exception handlers registered on the app are handed to the
    routes through the scope, where each route's own wrapping applies them (a
    ``RequestValidationError`` becomes the 422 envelope there), as FastAPI's
    ``ExceptionMiddleware`` did; FastAPI's ``ServerErrorMiddleware``, exception
    telemetry, body limit and ``AsyncExitStackMiddleware`` layers are not built
    (:func:`install_edge`). Request heads are bounded before this, by the protocol
    (:class:`visiona.kit.serve.LimitedHttpToolsProtocol`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        handlers: Mapping[Any, Callable[..., Any]],
        metrics: Metrics,
        max_body_bytes: int,
        body_read_timeout: float = 30.0,
        unlimited: Callable[[str], bool] = lambda _path: False,
    ) -> None:
        """Wrap ``app``; paths for which ``unlimited(path)`` is true bring their own limit.

        ``handlers`` are the app's exception handlers: the one for ``Exception`` (or
        500) answers what nothing else handles. A request body that stalls for
        ``body_read_timeout`` seconds between two reads is answered 408 (the
        application sees the client as gone).
        """
        self.app = app
        self._metrics = metrics
        self._max = max_body_bytes
        self._timeout = body_read_timeout
        self._unlimited = unlimited
        by_type: dict[Any, Handler] = {WebSocketException: _close_websocket}
        by_status: dict[int, Handler] = {}
        self._fallback: Handler | None = None
        for key, handler in handlers.items():
            if key in (500, Exception):
                self._fallback = handler
            elif isinstance(key, int):
                by_status[key] = handler
            else:
                by_type[key] = handler
        self._by_type = by_type
        self._by_status = by_status
        self._scope_handlers = (by_type, by_status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
            return
        if kind == "websocket":
            # A WebSocket route applies the handlers itself (its session's wrapping).
            scope[_HANDLERS_KEY] = self._scope_handlers
        await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        limit = None if self._unlimited(path) else self._max
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        head = scope["method"] == "HEAD"
        exchange = _Exchange(receive, send, request_id, limit, self._timeout, head=head)
        inner = {**scope, "method": "GET"} if head else scope
        inner[_HANDLERS_KEY] = self._scope_handlers
        token = request_id_var.set(request_id)
        client = scope.get("client")
        addr_token = client_addr_var.set(str(client[0]) if client else None)
        started = time.perf_counter()
        try:
            if limit is not None and _content_length(scope) > limit:
                exchange.refused = PayloadTooLargeError()
            else:
                await self._run(inner, exchange)
            if exchange.refused is not None and not exchange.started:
                await exchange.send_refusal()
        finally:
            elapsed = time.perf_counter() - started
            template = _route_template(inner)
            method = inner["method"]
            self._metrics.observe_request(method, template, exchange.status, elapsed)
            _ACCESS.info("%s %s %s %.1fms", method, path, exchange.status, elapsed * 1000)
            request_id_var.reset(token)
            client_addr_var.reset(addr_token)

    async def _run(self, scope: Scope, exchange: _Exchange) -> None:
        """The app, then the envelope for what escaped it (unless the edge refused)."""
        async with AsyncExitStack() as files:
            scope[_FILE_STACK_KEY] = files
            try:
                await self.app(scope, exchange.receive, exchange.send)
            except _HeadBodyDroppedError:
                if not exchange.started:  # pragma: no cover - body before start is not ASGI
                    raise
            except Exception as exc:  # noqa: BLE001 - rendered (or re-raised) by its handler
                if exchange.refused is None:
                    await self._render(scope, exchange, exc)

    async def _render(self, scope: Scope, exchange: _Exchange, exc: Exception) -> None:
        handler = None
        if isinstance(exc, StarletteHTTPException):
            handler = self._by_status.get(exc.status_code)
        if handler is None:
            handler = _lookup(self._by_type, exc)
        unexpected = handler is None
        if handler is None:
            handler = self._fallback or _unexpected
        if exchange.started:
            if unexpected:  # logged as such, then the server ends the cut-short response
                await handler(Request(scope, exchange.receive), exc)
            raise exc
        response = await handler(Request(scope, exchange.receive), exc)
        if response is not None:
            await response(scope, exchange.receive, exchange.send)
        exc.__traceback__ = None  # a reused exception instance would grow its traceback


def _lookup(handlers: Mapping[Any, Handler], exc: Exception) -> Handler | None:
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None


async def _unexpected(request: Request, exc: Exception) -> Response:
    _log_failure("unhandled error", request, exc)
    return _json(AppError())


def install_edge(
    app: FastAPI,
    *,
    metrics: Metrics,
    max_body_bytes: int,
    body_read_timeout: float,
    unlimited: Callable[[str], bool],
) -> None:
    """Make :class:`Edge` the app's one layer: the app's middleware stack becomes the
    user middleware (CORS, when origins are listed), then the edge, then the router.

    FastAPI's own ``build_middleware_stack`` puts five layers around the user
    middleware (server errors, exception telemetry, its body limit, exceptions, an
    ``AsyncExitStack``); the edge does what the service needs of them.
    """

    def build_middleware_stack() -> ASGIApp:
        stack: ASGIApp = Edge(
            app.router,
            handlers=app.exception_handlers,
            metrics=metrics,
            max_body_bytes=max_body_bytes,
            body_read_timeout=body_read_timeout,
            unlimited=unlimited,
        )
        for cls, args, kwargs in reversed(app.user_middleware):
            stack = cls(stack, *args, **kwargs)
        return stack

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]  # the edge replaces FastAPI's five layers


class _Exchange:
    """One request's receive/send wrappers: body limit and timeout, status, added headers,
    HEAD's dropped body."""

    def __init__(
        self,
        receive: Receive,
        send: Send,
        request_id: str,
        limit: int | None,
        timeout: float,
        *,
        head: bool = False,
    ) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._timeout = timeout
        self._head = head
        self._seen = 0
        self._body_done = False
        self.request_id = request_id
        self.status = 500
        self.started = False
        # Set when the edge answers instead of the app (413, 408).
        self.refused: AppError | None = None

    async def receive(self) -> Message:
        if self.refused is not None:
            return {"type": "http.disconnect"}
        if self._body_done:
            # Waiting for a disconnect (streaming responses, the proxy): no deadline.
            return await self._receive()
        try:
            async with asyncio.timeout(self._timeout):
                message = await self._receive()
        except TimeoutError:
            _LOGGER.info("request body stalled for %.1fs: 408", self._timeout)
            self.refused = RequestTimeoutError()
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self._body_done = not message.get("more_body", False)
            if self._limit is not None:
                self._seen += len(message.get("body", b""))
                if self._seen > self._limit:
                    # Stop the app reading; the edge answers 413 whatever the app does.
                    self.refused = PayloadTooLargeError()
                    return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused is not None:
            return
        await self._out(message)

    async def _out(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            self.status = status
            self.started = True
            headers = [*message.get("headers", []), (b"x-request-id", self.request_id.encode())]
            if not any(name.lower() == b"date" for name, _ in headers):
                headers.append((b"date", _http_date()))
            if status == 405:
                headers = _allow_head(headers)
            message = {**message, "headers": headers}
        elif kind == "http.response.body" and self._head:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            if message.get("more_body", False):
                raise _HeadBodyDroppedError
            return
        await self._send(message)

    async def send_refusal(self) -> None:
        """Answer with :attr:`refused` (the app's own messages are dropped from now on)."""
        assert self.refused is not None  # noqa: S101 - called once refused
        response = _json(self.refused)
        await self._out(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await self._out({"type": "http.response.body", "body": response.body})


def _allow_head(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A 405's headers with HEAD in ``Allow`` when GET is in it (HEAD is answered as GET)."""
    shown = []
    for name, value in headers:
        if name.lower() == b"allow":
            methods = [m.strip() for m in value.decode().split(",") if m.strip()]
            if "GET" in methods and "HEAD" not in methods:
                methods.append("HEAD")
            value = ", ".join(sorted(methods)).encode()  # noqa: PLW2901 - the header rewritten
        shown.append((name, value))
    return shown


_DATE: list[Any] = [0, b""]


def _http_date() -> bytes:
    """Now as an HTTP ``Date`` (RFC 9110 §5.6.7), formatted once per second."""
    now = int(time.time())
    if _DATE[0] != now:
        _DATE[0], _DATE[1] = now, formatdate(now, usegmt=True).encode("ascii")
    date: bytes = _DATE[1]
    return date


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
