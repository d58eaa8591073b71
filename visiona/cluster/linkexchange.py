"""The forwarding side of one proxied exchange over a node link (one yamux stream).

The header (docs/tunnel-protocol.md §19) and the request body, as length-prefixed
chunks, go out on the stream; the owning node answers with a head and the body raw,
ended by its FIN. Both bodies are streamed with the stream's credit as back-pressure:
the request body is read from the client only as fast as the link takes it, the answer
only as fast as the client takes it. Before the answer's head every failure is a 502;
after it, a broken link or a reset aborts the client's response (the connection is
closed without completing it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect
from starlette.responses import Response

from visiona.cluster.linkwire import (
    END_OF_BODY,
    LinkProtocolError,
    body_chunk,
    latin1_pairs,
    read_head,
)
from visiona.kit.errors import AppError
from visiona.kit.logs import end_incomplete_on_purpose
from visiona.yamux import YamuxError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import Receive, Scope, Send

    from visiona.yamux import Stream

_LOGGER = logging.getLogger(__name__)
_READ_SIZE = 1024 * 1024
UNREACHABLE = "The server node holding the device's tunnel is unreachable."


class NodeUnreachableError(AppError):
    """The node holding the device's tunnel cannot be reached: 502 ``device_offline``
    (the code a client sees for a device not connected anywhere, which it is, for it)."""

    status_code = 502
    code = "device_offline"
    default_message = UNREACHABLE


class LinkExchange:
    """One forwarded request: written on a fresh stream, its answer relayed to ASGI."""

    def __init__(self, stream: Stream, request: Request) -> None:
        """Prepare the exchange of ``request`` on ``stream`` (opened, nothing sent yet)."""
        self._stream = stream
        self._request = request
        self._pump: asyncio.Task[None] | None = None
        self._body_done = False
        self._client_gone = False
        self._complete = False

    async def open(self, header: bytes, *, has_body: bool) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Send the header (and start the body); wait for the answer's status and headers."""
        stream = self._stream
        try:
            if has_body:
                stream.write(header)
                self._pump = asyncio.get_running_loop().create_task(self._pump_body())
            else:
                stream.write(header + END_OF_BODY)
                self._body_done = True
            head = await read_head(stream)
            status = int(head["status"])
            headers = latin1_pairs(head["headers"])
        except (YamuxError, asyncio.IncompleteReadError) as err:
            await self.finish()
            raise NodeUnreachableError() from err
        except (LinkProtocolError, KeyError, TypeError, ValueError) as err:
            _LOGGER.warning("cluster: unreadable answer over the link: %s", err)
            await self.finish()
            raise NodeUnreachableError() from err
        except BaseException:
            await self.finish()
            raise
        return status, headers

    async def _pump_body(self) -> None:
        """Copy the request body to the stream, then watch for the client going away."""
        stream = self._stream
        request = self._request
        try:
            if not self._body_done:
                async for chunk in request.stream():
                    if chunk:
                        stream.writelines(body_chunk(chunk))
                        await stream.drain()
                stream.write(END_OF_BODY)
                self._body_done = True
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self._client_gone = True
        except ClientDisconnect:
            self._client_gone = True
        except YamuxError:
            return
        if self._client_gone and not self._complete:
            _LOGGER.debug("cluster: client went away; resetting link stream %s", stream.stream_id)
            stream.reset()

    async def relay(self, status: int, headers: list[tuple[bytes, bytes]], send: Send) -> None:
        """Send the head, then the body as it arrives; complete it only at the owner's FIN."""
        stream = self._stream
        await send({"type": "http.response.start", "status": status, "headers": headers})
        try:
            while not self._client_gone:
                chunk = await stream.read(_READ_SIZE)
                if stream.at_eof():
                    await self.finish(complete=True)
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if self._pump is None:  # more to come: notice a client that goes away
                    self._pump = asyncio.get_running_loop().create_task(self._pump_body())
        except YamuxError as err:
            if not self._client_gone:
                # Returning without completing the response is how ASGI aborts it.
                _LOGGER.info(
                    "cluster: the forwarded response broke off (%s); aborting the client's",
                    type(err).__name__,
                )
                end_incomplete_on_purpose()
        finally:
            await self.finish()

    async def finish(self, *, complete: bool = False) -> None:
        """End the exchange: stop the body pump; close the stream, or reset it if unfinished."""
        if complete:
            self._complete = True
        pump = self._pump
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if self._complete:
            self._stream.close()
        else:
            self._stream.reset()


class LinkResponse(Response):
    """An ASGI response relaying the owning node's answer (head already received)."""

    def __init__(
        self, exchange: LinkExchange, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Hold the exchange and the answer's head."""
        super().__init__(status_code=status)
        self._exchange = exchange
        self._status = status
        self._head = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002 - the exchange reads the request
        """Stream the owning node's answer to the client."""
        await self._exchange.relay(self._status, self._head, send)
