"""A TCP forward carried between nodes as one stream of the node link.

A caller's forward lands on a node that does not hold the device's tunnel. That node
has checked the caller, the device and the port; it opens a ``forward`` stream on its
link to the owning node (:meth:`visiona.cluster.service.Peer.open_stream`, the header
naming the user, their organisation, the API key they used, the device, the port and
the client's address) and the owning node admits and serves the forward from its own
tunnel as if the caller had come to it (``serve_forward`` in
:mod:`visiona.tunnel.tcp_endpoints`). No WebSocket, TCP or TLS handshake per forward:
a stream costs one yamux frame.

On the stream, after the header (docs/tunnel-protocol.md part 3):

- the owner answers a head: ``{"status": 101}`` when it accepted the forward, else the
  HTTP status, headers and error body it would have answered instead of the upgrade,
  then FIN;
- then both ways, frames of one type byte, a 4-byte big-endian length and the payload:
  ``D`` a binary WebSocket message (empty: the sender's half-close, as on the
  WebSocket), ``T`` a text message (the owner refuses it as it would locally), ``C`` a
  close (2-byte code, then the UTF-8 reason), after which the sender writes FIN.

Flow control is the link's: each side writes a frame and waits for the stream's window
(:meth:`~visiona.yamux.Stream.drain`), and reads the next message only once the last
one was sent on, so nothing is buffered beyond a frame per direction. A link lost in
the middle closes the caller's WebSocket with 4502.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import uuid
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from starlette.responses import Response
from starlette.websockets import WebSocketDisconnect

from visiona.cluster.linkexchange import NodeUnreachableError
from visiona.cluster.linkwire import LinkProtocolError, encode_head, read_head
from visiona.kit.logs import end_incomplete_on_purpose
from visiona.tunnel.errors import DeviceOfflineError
from visiona.wire import CLOSE_FORWARD_UNREACHABLE
from visiona.yamux import YamuxError

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from visiona.cluster.service import Peer
    from visiona.yamux import Stream

_LOGGER = logging.getLogger(__name__)
#: The link stream's kind.
KIND = "forward"
#: The owner's answer when it accepted the forward (the WebSocket upgrade's status).
ACCEPTED = 101
_FRAME = struct.Struct(">cI")
_CODE = struct.Struct(">H")
_DATA, _TEXT, _CLOSE = b"D", b"T", b"C"
#: The largest frame accepted (a WebSocket message as the server accepts it, with room).
MAX_FRAME = 32 * 1024 * 1024
#: The largest refusal body read back from the owner.
_MAX_REFUSAL = 64 * 1024
#: How long a side waits for the other's end once it closed its own.
_LINGER = 5.0
#: close codes an endpoint may not send (they only describe what happened locally)
_RESERVED_CLOSES = {1005, 1006, 1015}
_HEADERS_RELAYED = {"content-type", "retry-after"}


class ForwardSocket(Protocol):
    """What a forward is served through: the caller's WebSocket, or (on the owning node)
    :class:`LinkSocket`, the caller's WebSocket as seen through the link."""

    @property
    def app(self) -> Any:
        """The application serving the forward."""
        ...

    async def accept(self) -> None:
        """Accept the forward (the upgrade)."""
        ...

    async def receive(self) -> MutableMapping[str, Any]:
        """The next ASGI WebSocket message from the caller."""
        ...

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message to the caller."""
        ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close with ``code`` and ``reason``."""
        ...

    async def send_denial_response(self, response: Response) -> None:
        """Answer ``response`` instead of the upgrade."""
        ...


def frame(kind: bytes, payload: bytes) -> bytes:
    """One frame's bytes (its type, length and payload)."""
    return _FRAME.pack(kind, len(payload)) + payload


def close_frame(code: int, reason: str) -> bytes:
    """A ``C`` frame: the close code and reason."""
    return frame(_CLOSE, _CODE.pack(code) + reason.encode("utf-8"))


async def read_frame(stream: Stream) -> tuple[bytes, bytes]:
    """The next frame's type and payload (``asyncio.IncompleteReadError`` at the stream's
    end, :class:`LinkProtocolError` for a frame too large or of an unknown type)."""
    kind, size = _FRAME.unpack(await stream.readexactly(_FRAME.size))
    if size > MAX_FRAME or kind not in {_DATA, _TEXT, _CLOSE}:
        raise LinkProtocolError(f"forward frame {kind!r} of {size} bytes")
    return kind, (await stream.readexactly(size) if size else b"")


def parse_close(payload: bytes) -> tuple[int, str]:
    """A ``C`` frame's code and reason."""
    if len(payload) < _CODE.size:
        raise LinkProtocolError("short close frame")
    (code,) = _CODE.unpack_from(payload)
    return code, payload[_CODE.size :].decode("utf-8", "replace")


class LinkSocket:
    """The caller's WebSocket as the owning node sees it, through a ``forward`` stream.

    :meth:`send_bytes` and :meth:`close` write frames; :meth:`receive` turns the
    forwarding node's frames back into ASGI WebSocket messages (a link lost is the
    caller going away: ``websocket.disconnect`` with 1006). Errors of the link stream
    surface as :class:`ConnectionResetError`, the way a WebSocket's do, so they are
    never taken for the device's stream failing.
    """

    __slots__ = ("_app", "_closed", "_stream")

    def __init__(self, app: Any, stream: Stream) -> None:
        """Serve the forward of ``stream`` in ``app``."""
        self._app = app
        self._stream = stream
        self._closed = False

    @property
    def app(self) -> Any:
        """The application serving the forward."""
        return self._app

    async def accept(self) -> None:
        """Answer the accepted head."""
        await self._write(encode_head({"status": ACCEPTED}))

    async def send_denial_response(self, response: Response) -> None:
        """Answer ``response`` (a refusal before the upgrade): its head, its body, FIN."""
        headers = [
            [k.decode("latin-1"), v.decode("latin-1")]
            for k, v in response.raw_headers
            if k.decode("latin-1").lower() in _HEADERS_RELAYED
        ]
        await self._write(
            encode_head({"status": response.status_code, "headers": headers}) + response.body
        )
        self._finish()

    async def receive(self) -> MutableMapping[str, Any]:
        """The caller's next message, as the ASGI server would give it."""
        try:
            kind, payload = await read_frame(self._stream)
        except (YamuxError, asyncio.IncompleteReadError, LinkProtocolError):
            return {"type": "websocket.disconnect", "code": 1006}
        if kind == _DATA:
            return {"type": "websocket.receive", "bytes": payload}
        if kind == _TEXT:
            return {"type": "websocket.receive", "text": payload.decode("utf-8", "replace")}
        code, _ = parse_close(payload)
        return {"type": "websocket.disconnect", "code": code}

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message to the caller."""
        await self._write(frame(_DATA, data))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Send the close, then FIN."""
        if self._closed:
            return
        await self._write(close_frame(code, reason or ""))
        self._finish()

    async def _write(self, data: bytes) -> None:
        try:
            self._stream.write(data)
            await self._stream.drain()
        except YamuxError as err:
            raise ConnectionResetError("the forwarding node went away") from err

    def _finish(self) -> None:
        self._closed = True
        with contextlib.suppress(YamuxError):
            self._stream.close()


async def hop(
    websocket: WebSocket,
    peer: Peer,
    *,
    device_id: uuid.UUID,
    port: int,
    user_id: uuid.UUID,
    org_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
    client: str | None,
    accept_within: float,
) -> None:
    """Carry the caller's forward to ``peer`` (which holds the device's tunnel) on a
    ``forward`` stream; answer its refusal as it came, or copy both ways once it
    accepted. ``accept_within``: seconds the owner may take to accept."""
    head = {
        "kind": KIND,
        "user": str(user_id),
        "org": str(org_id),
        "key": None if api_key_id is None else str(api_key_id),
        "device": str(device_id),
        "port": port,
        "client": client,
    }
    stream: Stream | None = None
    try:
        stream = await peer.open_stream(head)
        async with asyncio.timeout(accept_within):
            answer = await read_head(stream)
        status = int(answer.get("status", 0))
        if status != ACCEPTED:
            body = await _read_rest(stream)
            await _refuse(websocket, status, answer.get("headers"), body)
            return
    except (
        NodeUnreachableError,
        YamuxError,
        asyncio.IncompleteReadError,
        LinkProtocolError,
        TimeoutError,
        ValueError,
    ) as err:
        _LOGGER.warning(
            "cluster: node %s holding a forward's device is unreachable: %s",
            peer.owner.node_id,
            type(err).__name__,
        )
        if stream is not None:
            stream.reset()
        error = DeviceOfflineError("The server node holding the device's tunnel is unreachable.")
        await _refuse(websocket, error.status_code, None, json.dumps(error.body()).encode())
        return
    await websocket.accept()
    await _pipe(websocket, stream)


async def _read_rest(stream: Stream) -> bytes:
    """The refusal's body: what the owner wrote before its FIN (bounded)."""
    body = bytearray()
    with contextlib.suppress(YamuxError, asyncio.IncompleteReadError):
        while len(body) < _MAX_REFUSAL and (chunk := await stream.read(_MAX_REFUSAL)):
            body += chunk
    return bytes(body[:_MAX_REFUSAL])


async def _refuse(websocket: WebSocket, status: int, headers: object, body: bytes) -> None:
    """Answer the owner's refusal (or ours) instead of the upgrade."""
    relayed = {
        str(pair[0]): str(pair[1])
        for pair in (headers if isinstance(headers, list) else [])
        if isinstance(pair, list) and len(pair) == 2 and str(pair[0]).lower() in _HEADERS_RELAYED
    }
    relayed.setdefault("content-type", "application/json")
    await websocket.send_denial_response(
        Response(body, status_code=status if 400 <= status < 600 else 502, headers=relayed)
    )
    end_incomplete_on_purpose()  # a denial is a complete answer; uvicorn thinks not


async def _pipe(websocket: WebSocket, stream: Stream) -> None:
    """Copy the caller's messages onto the stream and the owner's frames back, until the
    owner closes (its close code and reason end the caller's WebSocket too)."""
    loop = asyncio.get_running_loop()
    caller = loop.create_task(_from_caller(websocket, stream))
    ended: tuple[int, str] | None = None
    try:
        ended = await _from_owner(websocket, stream)
    finally:
        if ended is None:  # the caller went away: the owner ends the forward on our close
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(caller, _LINGER)
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await caller
        stream.reset()
    if ended is None:
        return
    code, reason = ended
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code, reason)


async def _from_caller(websocket: WebSocket, stream: Stream) -> None:
    """The caller's messages as frames; its disconnect as a close frame and FIN."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                stream.write(close_frame(int(message.get("code") or 1005), "the client closed"))
                stream.close()
                return
            data = message.get("bytes")
            if data is not None:
                stream.write(frame(_DATA, data))
            else:
                stream.write(frame(_TEXT, str(message.get("text", "")).encode("utf-8")))
            await stream.drain()
    except YamuxError:
        return  # the owner's side ended: _from_owner says how
    except (WebSocketDisconnect, RuntimeError, OSError):
        with contextlib.suppress(YamuxError):
            stream.write(close_frame(1006, "the client went away"))
            stream.close()


async def _from_owner(websocket: WebSocket, stream: Stream) -> tuple[int, str] | None:
    """The owner's frames to the caller; the owner's close code and reason (4502 when the
    link broke first), or None when the caller went away."""
    try:
        while True:
            kind, payload = await read_frame(stream)
            if kind == _DATA:
                await websocket.send_bytes(payload)
            elif kind == _CLOSE:
                code, reason = parse_close(payload)
                if code in _RESERVED_CLOSES:
                    break
                return code, reason
            else:  # text: never sent by an owner of this version
                break
    except (YamuxError, asyncio.IncompleteReadError, LinkProtocolError):
        pass
    except (WebSocketDisconnect, RuntimeError, OSError):
        return None
    return CLOSE_FORWARD_UNREACHABLE, "the node holding the device's tunnel went away"
