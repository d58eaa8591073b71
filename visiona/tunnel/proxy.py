"""The HTTP proxy to devices: one HTTP/1.1 exchange per yamux stream, streamed both ways.

The request head is written by hand (method, target with the query string, headers
without hop-by-hop ones nor the caller's cloud credentials, ``X-Forwarded-*`` added);
the body is copied to the stream as it arrives. The response head is parsed with
httptools (visiona/tunnel/response.py); a ``Content-Length`` body or one delimited by
the end of the stream is relayed as raw reads from the stream, a chunked one decoded
by the same parser. Nothing is buffered whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from visiona.kit.http import HOP_BY_HOP
from visiona.kit.logs import end_incomplete_on_purpose
from visiona.tunnel.errors import DeviceTimeoutError, DeviceUnreachableError
from visiona.tunnel.response import InvalidResponseError, ResponseParser
from visiona.yamux import YamuxError

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import Receive, Scope, Send

    from visiona.yamux import Session, Stream

_LOGGER = logging.getLogger(__name__)
_READ_SIZE = 1024 * 1024
# The caller's cloud credentials never reach the device; forwarding headers are ours.
_DROPPED_REQUEST = HOP_BY_HOP | {
    b"authorization",
    b"cookie",
    b"content-length",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-prefix",
    b"x-real-ip",
}
_DROPPED_RESPONSE = HOP_BY_HOP | {b"content-length"}


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in ``Connection`` (hop-by-hop too, RFC 9110 §7.6.1)."""
    return {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
        if token.strip()
    }


def request_head(request: Request, prefix: str) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The headers to send to the device and whether the request has a body to stream."""
    raw: list[tuple[bytes, bytes]] = [(k.lower(), v) for k, v in request.scope["headers"]]
    listed = _connection_tokens(raw)
    headers = [(k, v) for k, v in raw if k not in _DROPPED_REQUEST and k not in listed]
    length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if length is not None:
        headers.append((b"content-length", length.encode("latin-1")))
    elif chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    if not any(k == b"host" for k, _ in headers):
        headers.append((b"host", b"device"))
    client = request.client.host if request.client else "unknown"
    headers += [
        (b"x-forwarded-for", client.encode("latin-1")),
        (b"x-forwarded-proto", str(request.scope.get("scheme", "http")).encode("latin-1")),
        (b"x-forwarded-host", request.headers.get("host", "").encode("latin-1")),
        (b"x-forwarded-prefix", prefix.encode("latin-1")),
        (b"connection", b"close"),
    ]
    has_body = (length is not None and length != "0") or chunked
    return headers, has_body


class ProxyExchange:
    """One proxied request: writes it on a fresh stream, then answers the ASGI call."""

    def __init__(
        self,
        session: Session,
        request: Request,
        target: bytes,
        prefix: str,
        timeout: float,
        *,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Prepare the exchange for ``request`` aimed at ``target`` (path and query).

        ``on_done`` runs when the exchange ends (:meth:`abort`; extra calls are the
        caller's to make idempotent): the admission slot is given back there.
        """
        self._on_done = on_done
        self._session = session
        self._request = request
        self._target = target
        self._prefix = prefix
        self._timeout = timeout
        self._response = ResponseParser()
        self._stream: Stream | None = None
        self._sent = 0
        self._body_done = False
        self._client_gone = False
        self._chunked = False
        self._final_sent = False
        self._complete = False
        self._length = 0
        self._pump: asyncio.Task[None] | None = None

    async def open(self) -> tuple[int, list[tuple[bytes, bytes]], str]:
        """Open the stream, send the head, start the body and wait for the response head.

        Returns the status, the response headers to relay and the body framing
        (``length``, ``chunked``, ``eof`` or ``none``).
        """
        try:
            self._stream = await self._session.open_stream()
        except YamuxError as err:
            raise DeviceUnreachableError() from err
        headers, has_body = request_head(self._request, self._prefix)
        method = self._request.method.encode("ascii")
        self._chunked = any(k == b"transfer-encoding" for k, _ in headers)
        # The head is written by hand: the caller's headers were parsed by our HTTP server.
        lines = [method, b" ", self._target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        self._stream.write(b"".join(lines))
        try:
            if has_body:
                self._pump = asyncio.get_running_loop().create_task(self._pump_body())
                return await self._await_head()
            self._body_done = True
            async with asyncio.timeout(self._timeout):
                return await self._read_head()
        except TimeoutError as err:
            await self.abort()
            raise DeviceTimeoutError() from err
        except BaseException:
            await self.abort()
            raise

    async def _pump_body(self) -> None:
        """Copy the request body to the stream, then watch for the client going away."""
        stream = self._stream
        assert stream is not None  # noqa: S101 - open() set it
        try:
            if not self._body_done:
                chunked = self._chunked
                async for chunk in self._request.stream():
                    if chunk:
                        if chunked:
                            stream.write(b"%x\r\n" % len(chunk))
                            stream.write(chunk)
                            stream.write(b"\r\n")
                        else:
                            stream.write(chunk)
                        self._sent += len(chunk)
                        await stream.drain()
                if chunked:
                    stream.write(b"0\r\n\r\n")
                self._body_done = True
            while (await self._request.receive())["type"] != "http.disconnect":
                pass
            self._client_gone = True
        except ClientDisconnect:
            self._client_gone = True
        except YamuxError:
            return
        if self._client_gone and not stream.at_eof():
            _LOGGER.debug("proxy: client went away; resetting stream %s", stream.stream_id)
            stream.reset()

    async def _await_head(self) -> tuple[int, list[tuple[bytes, bytes]], str]:
        reader = asyncio.get_running_loop().create_task(self._read_head())
        try:
            while True:
                progress = self._sent
                done, _ = await asyncio.wait({reader}, timeout=self._timeout)
                if done:
                    return reader.result()
                if not self._body_done and self._sent != progress:
                    continue  # still uploading: the device reads, it is not stuck
                raise DeviceTimeoutError()
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read_head(self) -> tuple[int, list[tuple[bytes, bytes]], str]:
        stream = self._stream
        assert stream is not None  # noqa: S101 - open() set it
        while True:
            try:
                head = await stream.readuntil(b"\r\n\r\n")
            except (YamuxError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
                raise DeviceUnreachableError() from err
            try:
                final = self._response.feed_head(head)
            except InvalidResponseError as err:
                raise DeviceUnreachableError("The device sent an invalid response.") from err
            if final:  # informational (1xx) heads are skipped
                status, headers = self._response.status, self._response.headers
                return status, self._response_headers(headers), self._framing(status, headers)

    def _framing(self, status: int, headers: list[tuple[bytes, bytes]]) -> str:
        if self._request.method == "HEAD" or status in {204, 304}:
            return "none"
        names = dict(headers)
        if b"chunked" in names.get(b"transfer-encoding", b"").lower():
            return "chunked"
        if b"content-length" in names:
            self._length = int(names[b"content-length"])
            return "length"
        return "eof"

    @staticmethod
    def _response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        listed = _connection_tokens(raw)
        kept = [(k, v) for k, v in raw if k not in _DROPPED_RESPONSE and k not in listed]
        length = dict(raw).get(b"content-length")
        if length is not None and b"transfer-encoding" not in dict(raw):
            kept.append((b"content-length", length))
        return kept

    async def relay(
        self, status: int, headers: list[tuple[bytes, bytes]], framing: str, send: Send
    ) -> None:
        """Send the response head and stream the body to the ASGI ``send``."""
        await send({"type": "http.response.start", "status": status, "headers": headers})
        try:
            if framing == "length":
                await self._relay_length(send)
            elif framing == "eof":
                self._watch_client()
                await self._relay_eof(send)
            elif framing == "chunked":
                self._watch_client()
                await self._relay_chunked(send)
            self._complete = not self._client_gone
        except (YamuxError, asyncio.IncompleteReadError, InvalidResponseError) as err:
            if not self._client_gone:
                # Returning without completing the response is how ASGI aborts it: the
                # server closes the connection, the client sees a truncated response.
                _LOGGER.info(
                    "proxy: the device's response broke off (%s); aborting the client's",
                    type(err).__name__,
                )
                end_incomplete_on_purpose()
            return
        finally:
            await self.abort()
        if not self._final_sent:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _watch_client(self) -> None:
        """Start watching for the client going away (the body pump does it after the body).

        Not needed when the whole answer is already here (a tiny response), which saves
        a task per request.
        """
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._pump_body())

    async def _relay_length(self, send: Send) -> None:
        stream = self._stream
        assert stream is not None  # noqa: S101 - open() set it
        left = self._length
        while left > 0 and not self._client_gone:
            chunk = await stream.read(min(left, _READ_SIZE))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(chunk)
            if not left:  # the last piece ends the response: one write less
                self._final_sent = True
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._watch_client()  # more to come: notice a client that goes away meanwhile

    async def _relay_eof(self, send: Send) -> None:
        stream = self._stream
        assert stream is not None  # noqa: S101 - open() set it
        while not self._client_gone:
            chunk = await stream.read(_READ_SIZE)
            if not chunk:
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def _relay_chunked(self, send: Send) -> None:
        stream = self._stream
        assert stream is not None  # noqa: S101 - open() set it
        while not self._client_gone:
            data = await stream.read(_READ_SIZE)
            for piece in self._response.feed_body(data):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            if self._response.complete or not data:
                return

    async def abort(self) -> None:
        """End the exchange: stop the body pump, close (or reset if unfinished) the stream."""
        if self._on_done is not None:
            self._on_done()
        pump = self._pump
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        stream = self._stream
        if stream is None:
            return
        if self._complete or stream.at_eof():
            stream.close()
        else:
            stream.reset()


class ProxyResponse(Response):
    """An ASGI response relaying a device's answer (head already received)."""

    def __init__(
        self, exchange: ProxyExchange, status: int, headers: list[tuple[bytes, bytes]], framing: str
    ) -> None:
        """Hold the exchange and its response head."""
        super().__init__(status_code=status)
        self._exchange = exchange
        self._status = status
        self._head = headers
        self._framing = framing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002 - the exchange reads the request
        """Stream the device's response to the client."""
        await self._exchange.relay(self._status, self._head, self._framing, send)
