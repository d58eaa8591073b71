"""The accepting side of the node link: each stream a peer opens, served by its kind.

A peer's authenticated link (the WebSocket route is in visiona/cluster/endpoints.py)
carries a yamux session in which this node is the server: each stream the peer opens
is one exchange, whose header names its ``kind``. :class:`LinkHandlers` hands it to the
handler the features provide and the composition root (visiona/app.py) registers, so
the cluster imports no feature; a handler serves it from this node's own tunnels only
(never forwarded again: the one-hop rule):

- ``proxy`` (:meth:`LinkHandlers.proxy`): the request is rebuilt as an ASGI request
  whose body is read from the stream, the handler (the tunnel relay's local proxy)
  answers it exactly as a local one (admission, audit, errors), and its response is
  written back: a head, the body raw, FIN when complete, RST when not.
- a stream kind (:meth:`LinkHandlers.stream`, e.g. ``forward``, a TCP forward): the
  handler is given the stream and its header and owns the stream from then on (what
  follows the header is the feature's own framing).
- any other kind (:meth:`LinkHandlers.call`): a call a feature hands over
  (:meth:`visiona.cluster.service.Peer.call`; the kind is the first segment of its
  internal path, e.g. ``deployments``): the handler runs it; the answer is a head
  with the HTTP status and error code the internal HTTP route would give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request

from visiona.cluster.linkwire import (
    LINK_PATH,
    MAX_HEAD,
    VERSION,
    LinkProtocolError,
    encode_head,
    latin1_pairs,
    read_chunk,
    read_head,
)
from visiona.kit.database import map_db_error
from visiona.kit.errors import AppError, BadRequestError, NotFoundError
from visiona.kit.logs import request_id_var
from visiona.yamux import YamuxError

if TYPE_CHECKING:
    from starlette.responses import Response
    from starlette.types import Message, Scope

    from visiona.yamux import Stream


class ProxyHere(Protocol):
    """Serve a proxied request forwarded by another node from this node's tunnels only."""

    async def __call__(
        self,
        request: Request,
        *,
        device_id: uuid.UUID,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        target: bytes,
        prefix: str,
        api_key_id: uuid.UUID | None = None,
    ) -> Response:
        """The response to relay back (an :class:`AppError` is answered as its error)."""
        ...


#: Serve a stream of a raw kind: ``(stream, header)``; the handler owns the stream (it
#: answers, copies and closes it); an :class:`AppError` raised before it answered is
#: answered with its status and code.
StreamHere = Callable[["Stream", dict[str, Any]], Awaitable[None]]

#: Run a call another node handed over: ``(path, user_id, org_id, body)``; returning is a
#: 200, an :class:`AppError` raised is answered with its status and code.
CallHere = Callable[[str, uuid.UUID, uuid.UUID, dict[str, Any]], Awaitable[None]]

_LOGGER = logging.getLogger(__name__)
#: Largest request body chunk accepted from a peer (the forwarding node sends what
#: its HTTP server received: far less).
_MAX_CHUNK = 16 * 1024 * 1024
_HEAD_TIMEOUT = 30.0


# -- one stream: one exchange ----------------------------------------------------------
class LinkHandlers:
    """What this node does with the streams peers open: a handler per kind.

    Empty until the composition root registers the features' handlers; a stream of a
    kind nobody handles is answered 404 (a peer of another version, or a feature not
    running here).
    """

    def __init__(self) -> None:
        """No handler yet."""
        self._proxy: ProxyHere | None = None
        self._calls: dict[str, CallHere] = {}
        self._streams: dict[str, StreamHere] = {}

    def proxy(self, handler: ProxyHere) -> None:
        """Serve ``proxy`` streams (forwarded proxied requests) with ``handler``."""
        self._proxy = handler

    def stream(self, kind: str, handler: StreamHere) -> None:
        """Hand streams of ``kind`` to ``handler`` whole (it owns their framing)."""
        if kind == "proxy":
            raise ValueError("`proxy` is the proxied requests' kind")
        self._streams[kind] = handler

    def call(self, kind: str, handler: CallHere) -> None:
        """Serve calls of ``kind`` (the first segment of their internal path) with ``handler``."""
        if kind == "proxy":
            raise ValueError("`proxy` is the proxied requests' kind")
        self._calls[kind] = handler

    async def serve(self, stream: Stream) -> None:
        """Serve one exchange a peer opened: read its header, run it here, answer."""
        try:
            async with asyncio.timeout(_HEAD_TIMEOUT):
                head = await read_head(stream)
        except (YamuxError, asyncio.IncompleteReadError, LinkProtocolError, TimeoutError) as err:
            _LOGGER.info("cluster: unreadable link exchange: %s", type(err).__name__)
            stream.reset()
            return
        request_id_var.set(str(head.get("request_id") or "") or None)  # this task's own context
        kind = str(head.get("kind")) if head.get("v") == VERSION and head.get("hop") == 1 else None
        try:
            await self._run(kind, stream, head)
        except (AppError, LinkProtocolError, ValueError) as err:
            await _answer_error(stream, err)
        except YamuxError:
            stream.reset()
        except Exception as err:
            mapped = map_db_error(err)
            if mapped is None:
                _LOGGER.exception("cluster: link exchange failed")
                mapped = AppError()
            await _answer_error(stream, mapped)

    async def _run(self, kind: str | None, stream: Stream, head: dict[str, Any]) -> None:
        """Hand the exchange to the handler of ``kind`` (404 when there is none)."""
        if kind is None:
            raise_unknown()
        elif kind == "proxy":
            if self._proxy is None:
                raise NotFoundError("No proxy on this node.")
            await _serve_proxy(self._proxy, stream, head)
        elif kind in self._streams:
            await self._streams[kind](stream, head)
        else:
            handler = self._calls.get(kind)
            if handler is None:
                raise NotFoundError("Unknown link exchange.")
            await _serve_call(handler, stream, head)


def raise_unknown() -> None:
    """An exchange of another version, kind or hop count: 400."""
    raise BadRequestError("Unsupported link exchange.")


async def _answer_error(stream: Stream, err: Exception) -> None:
    """Answer ``err`` as the JSON error body the HTTP API would give."""
    if not isinstance(err, AppError):
        err = BadRequestError("Malformed link exchange.")
    body = json.dumps(err.body()).encode()
    headers = [
        ["content-type", "application/json"],
        ["content-length", str(len(body))],
        *([k, v] for k, v in err.headers.items()),
    ]
    code = err.body()["error"]["code"]
    with contextlib.suppress(YamuxError):
        stream.write(encode_head({"status": err.status_code, "headers": headers, "code": code}))
        stream.write(body)
        stream.close()


class _LinkReceive:
    """ASGI ``receive`` over the stream: the body's chunks, then the forwarder's end."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._body_done = False

    async def __call__(self) -> Message:
        stream = self._stream
        try:
            if not self._body_done:
                chunk = await read_chunk(stream, _MAX_CHUNK)
                if chunk:
                    return {"type": "http.request", "body": chunk, "more_body": True}
                self._body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            # The forwarding node sends FIN once it has the whole answer, RST when its
            # client went away: either is the end of the request.
            while await stream.read(MAX_HEAD):
                pass
        except (YamuxError, asyncio.IncompleteReadError, LinkProtocolError):
            pass
        return {"type": "http.disconnect"}


class _LinkSend:
    """ASGI ``send`` onto the stream: the head, the body raw, FIN when complete."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self.complete = False

    async def __call__(self, message: Message) -> None:
        stream = self._stream
        if message["type"] == "http.response.start":
            headers = [
                [k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])
            ]
            stream.write(encode_head({"status": message["status"], "headers": headers}))
            return
        if message["type"] != "http.response.body":
            return
        body = message.get("body", b"")
        if body:
            stream.write(body)
        if not message.get("more_body", False):
            self.complete = True
            stream.write_eof()
        await stream.drain()


async def _serve_proxy(here: ProxyHere, stream: Stream, head: dict[str, Any]) -> None:
    """Run a forwarded proxied request through ``here`` (this node's tunnel), as a local one."""
    try:
        user_id = uuid.UUID(str(head["user"]))
        org_id = uuid.UUID(str(head["org"]))
        key = head.get("key")
        api_key_id = uuid.UUID(str(key)) if key else None
        device_id = uuid.UUID(str(head["device"]))
        target = str(head["target"]).encode("latin-1")
        prefix = str(head["prefix"])
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": str(head["method"]),
            "scheme": "https" if head.get("scheme") == "https" else "http",
            "path": LINK_PATH,
            "raw_path": LINK_PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": latin1_pairs(head["headers"]),
            "client": (str(head.get("client") or "unknown"), 0),
            "server": None,
            "state": {},
        }
    except (KeyError, UnicodeEncodeError, ValueError) as err:
        raise LinkProtocolError("malformed proxy header") from err
    receive, send = _LinkReceive(stream), _LinkSend(stream)
    request = Request(scope, receive)
    try:
        response = await here(
            request,
            device_id=device_id,
            user_id=user_id,
            org_id=org_id,
            target=target,
            prefix=prefix,
            api_key_id=api_key_id,
        )
    except YamuxError:
        raise
    except Exception as err:
        mapped = err if isinstance(err, AppError) else map_db_error(err)
        if mapped is None:
            raise
        await _answer_error(stream, mapped)
        return
    try:
        await response(scope, receive, send)
    except YamuxError:
        send.complete = False
    if send.complete:
        stream.close()
    else:
        stream.reset()


async def _serve_call(handler: CallHere, stream: Stream, head: dict[str, Any]) -> None:
    """Run a call another node handed over; answer 200 (its errors: by the caller)."""
    try:
        user_id = uuid.UUID(str(head["user"]))
        org_id = uuid.UUID(str(head["org"]))
        path = str(head["path"])
        body = head["body"]
    except (KeyError, ValueError) as err:
        raise LinkProtocolError("malformed call header") from err
    await handler(path, user_id, org_id, body if isinstance(body, dict) else {})
    with contextlib.suppress(YamuxError):
        stream.write(encode_head({"status": 200, "headers": [], "code": None}))
        stream.close()
