"""uvicorn's sans-I/O WebSocket protocol with a direct byte path (for the agent tunnels).

Through ASGI, every WebSocket message costs two task wake-ups on the server: uvicorn
queues a received message (and pauses reading until the app takes it), the tunnel's
reader task wakes to take it; a message to send wakes the tunnel's writer task,
which awaits uvicorn's ``send``. For a tunnel that is most of the cost of a tiny
proxied request, and nearly all of the cost of an idle tunnel's keepalive.

:class:`TunnelWebSocketProtocol` is the protocol ``visiona serve`` gives uvicorn. It
behaves exactly like uvicorn's own until the app, after ``websocket.accept``, calls the
``visiona.tunnel.direct`` scope extension (:data:`DIRECT_EXTENSION`): from then on
binary messages go straight from the protocol's ``data_received`` into a
:class:`~visiona.yamux.MessageTransport`, and the session's writes leave as frames
written straight to the socket. Reading is never paused (yamux's stream windows bound
what a peer may send); the socket's write back-pressure is forwarded to the session.
Any other server (a test client, another ASGI server) lacks the extension, and the
tunnel runs over ASGI messages as before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.protocol import Protocol, State
from websockets.streams import StreamReader

from visiona.kit.errors import ServiceUnavailableError
from visiona.kit.wsframes import binary_head, read_client_frames
from visiona.wire import CLOSE_UNSUPPORTED
from visiona.yamux import MessageTransport

if TYPE_CHECKING:
    from websockets.frames import Frame
    from websockets.http11 import Request

    from visiona.yamux.frames import Buffer

_LOGGER = logging.getLogger(__name__)

#: The ASGI scope extension: ``open(close_args, max_message) -> MessageTransport``.
DIRECT_EXTENSION = "visiona.tunnel.direct"

#: What the tunnel answers when asked how to close: (close code, reason).
CloseArgs = Callable[[], tuple[int, str]]
DirectOpener = Callable[[CloseArgs, int], MessageTransport]


#: The generators websockets' parser waits in between two frames (see ``_at_frame_start``).
_PARSE_CODE = Protocol.parse.__code__
_AT_EOF_CODE = StreamReader.at_eof.__code__
#: Payloads up to this size leave joined to their head (one small copy); larger ones
#: leave as two buffers of one write.
_JOIN_MAX = 4096


class TunnelClosedError(ConnectionError):
    """The WebSocket under a direct tunnel ended (or cannot carry a message)."""


class UpgradeAbandonedError(ConnectionError):
    """The peer went away before its upgrade completed (a normal event in a storm: an
    agent whose handshake timed out gave up and closed its socket)."""


class TunnelWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O protocol, plus the direct byte path (see the module doc).

    An upgrade still pending when the server stops is answered 503 with
    ``Retry-After`` and an error body, not uvicorn's plain-text 500.
    """

    #: ``Retry-After`` of an upgrade refused because the server stops.
    shutdown_retry_after: ClassVar[int] = 5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Build uvicorn's protocol; no direct path until the app opens it."""
        super().__init__(*args, **kwargs)
        self._direct: MessageTransport | None = None
        self._close_args: CloseArgs | None = None
        self._refused = False
        #: None: websockets reads the frames; else the direct path reads them in place
        #: (:mod:`visiona.kit.wsframes`) and this holds the start of an incomplete one
        self._partial: bytearray | None = None
        self._frame_limit: int | None = None

    def shutdown(self) -> None:
        """The server stops: a pending upgrade gets 503 + ``Retry-After``; else uvicorn's."""
        if self.handshake_complete or self.initial_response is not None or self.close_sent:
            super().shutdown()
            return
        self.stop_keepalive()
        err = ServiceUnavailableError(
            "The server is shutting down; retry later.",
            headers={"Retry-After": str(self.shutdown_retry_after)},
        )
        if self.handshake_initiated and not self.transport.is_closing():
            response = self.conn.reject(err.status_code, json.dumps(err.body()))
            response.headers["Content-Type"] = "application/json"
            response.headers["Retry-After"] = str(self.shutdown_retry_after)
            self.conn.send_response(response)
            self.transport.write(b"".join(self.conn.data_to_send()))
        self._refused = True
        self.handshake_complete = True
        self.close_sent = True
        self.transport.close()

    async def send(self, message: Any) -> None:
        """uvicorn's ``send``; after the shutdown answer, the app's accept finds no one."""
        if self._refused:
            raise ClientDisconnected
        await super().send(message)

    # -- uvicorn hooks ----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """Bytes from the peer. On a direct tunnel whose frames websockets has read up to
        a frame's start, whole binary frames are read in place and fed to the tunnel;
        anything else (and everything after it) goes to websockets as before."""
        partial = self._partial
        if partial is None:
            if self._direct is None or self.close_sent or not self._at_frame_start():
                super().data_received(data)
                return
            buffer: bytes | bytearray = data
        elif partial:
            partial += data
            buffer = partial
        else:
            buffer = data
        consumed, simple = (
            (0, False)
            if self.close_sent
            else read_client_frames(buffer, self._frame_limit, self._deliver)
        )
        if simple:
            self._partial = bytearray(buffer[consumed:]) if consumed < len(buffer) else bytearray()
            return
        self._partial = None  # websockets reads from here on, from a frame's start
        if consumed < len(buffer):
            super().data_received(bytes(buffer[consumed:]))

    def _deliver(self, payload: bytes) -> bool:
        """One binary message read in place: to the tunnel; go on unless it closed."""
        direct = self._direct
        if direct is None or self.close_sent:
            return False
        direct.feed_data(payload)
        return not self.close_sent

    def _at_frame_start(self) -> bool:
        """Whether websockets' parser holds nothing of a next frame: the connection open,
        no byte buffered, no fragmented message begun, and the parser waiting in
        ``at_eof`` between two frames (a parser inside a frame waits in ``read_exact``
        with the head already taken, so an empty buffer alone does not tell)."""
        conn = self.conn
        if (
            conn.state is not State.OPEN
            or conn.reader.buffer
            or conn.reader.eof
            or conn.current_size is not None
            or conn.parser_exc is not None
        ):
            return False
        outer: object = None
        inner: object = conn.parser
        while (nested := getattr(inner, "gi_yieldfrom", None)) is not None:
            outer, inner = inner, nested
        return (
            getattr(inner, "gi_code", None) is _AT_EOF_CODE
            and getattr(outer, "gi_code", None) is _PARSE_CODE
        )

    def handle_connect(self, event: Request) -> None:
        """Accept as uvicorn does, and offer the direct path in the scope's extensions."""
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope.setdefault("extensions", {})[DIRECT_EXTENSION] = self._open_direct

    def send_receive_event_to_app(self) -> None:
        """A whole message arrived: to the tunnel directly once opened, else to ASGI."""
        direct = self._direct
        if direct is None:
            super().send_receive_event_to_app()
            return
        frames, self.frames = self.frames, []
        if self.close_sent:
            return  # past our close: reads continue until the peer's close reply
        if self.curr_msg_data_type != "bytes":
            _LOGGER.info("tunnel: text message from %s; closing", self.client)
            self._close_now(CLOSE_UNSUPPORTED, "binary messages only")
            direct.connection_lost(TunnelClosedError("text message on the tunnel"))
            return
        direct.feed_data(frames[0] if len(frames) == 1 else b"".join(frames))

    def handle_close(self, event: Frame) -> None:
        """The peer's close frame: uvicorn answers it; the tunnel's session ends."""
        super().handle_close(event)
        if self._direct is not None:
            self._direct.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: so is the tunnel."""
        super().connection_lost(exc)
        if self._direct is not None:
            self._direct.connection_lost(exc)

    def pause_writing(self) -> None:
        """The socket buffer is over its high-water mark: hold the session's data too."""
        super().pause_writing()
        if self._direct is not None:
            self._direct.pause_writing()

    def resume_writing(self) -> None:
        """The socket buffer drained: the session may send again."""
        super().resume_writing()
        if self._direct is not None:
            self._direct.resume_writing()

    # -- the direct path --------------------------------------------------------------
    def _open_direct(self, close_args: CloseArgs, max_message: int) -> MessageTransport:
        """Take over the accepted WebSocket's messages (the scope extension's callable).

        Messages already queued for ASGI are handed over first, in order. Raises
        :class:`UpgradeAbandonedError` when the peer went away before the upgrade
        completed (uvicorn then answers nothing and logs nothing: there is no one to
        answer).
        """
        if self.initial_response is None and (
            self.disconnected or (not self.handshake_complete and self.transport.is_closing())
        ):
            # uvicorn skipped the 101 on the closing socket: nothing more to write on it
            self.handshake_complete = True
            self.close_sent = True
            raise UpgradeAbandonedError("the peer went away during its upgrade")
        if not self.handshake_complete or self.initial_response is not None:
            raise RuntimeError("the direct path opens on an accepted WebSocket only")
        if self._direct is not None:
            raise RuntimeError("the direct path is already open")
        self._close_args = close_args
        limits = (self.conn.max_message_size, self.conn.max_fragment_size)
        self._frame_limit = min((limit for limit in limits if limit is not None), default=None)
        direct = MessageTransport(
            self._send_message,
            self._close_direct,
            abort=self._abort_direct,
            max_message=max_message,
            extra={"peername": self.client},
        )
        self._direct = direct
        while not self.queue.empty():
            message = self.queue.get_nowait()
            if message["type"] == "websocket.receive":
                data = message.get("bytes")
                if data is None:
                    self._close_now(CLOSE_UNSUPPORTED, "binary messages only")
                    direct.connection_lost(TunnelClosedError("text message on the tunnel"))
                    break
                direct.feed_data(data)
            elif message["type"] == "websocket.disconnect":
                direct.connection_lost(None)
                break
        if self.read_paused and not self.close_sent:
            self.read_paused = False
            self.transport.resume_reading()
        if not self.writable.is_set():
            direct.pause_writing()
        if self.disconnected:
            direct.connection_lost(None)
        return direct

    def _send_message(self, data: Buffer) -> None:
        if self.close_sent or self.disconnected:
            raise TunnelClosedError("the tunnel WebSocket is closed")
        conn = self.conn
        if (
            conn.state is State.OPEN
            and not conn.extensions
            and not conn.writes
            and not conn.expect_continuation_frame
        ):  # what send_binary would write, without its Frame: head + payload
            size = memoryview(data).nbytes
            if size <= _JOIN_MAX:
                self.transport.write(binary_head(size) + data)
            else:
                self.transport.writelines((binary_head(size), data))
            return
        try:
            self.conn.send_binary(data)
        except InvalidState as err:
            raise TunnelClosedError("the tunnel WebSocket is closed") from err
        self.transport.write(b"".join(self.conn.data_to_send()))

    def _close_direct(self) -> None:
        code, reason = self._close_args() if self._close_args is not None else (1000, "")
        self._close_now(code, reason)

    def _close_now(self, code: int, reason: str) -> None:
        """Send our close frame (as uvicorn does for ``websocket.close``); the peer's
        answer, or ``close_timeout``, closes the socket."""
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

    def _abort_direct(self) -> None:
        self.transport.abort()


def direct_opener(scope: Mapping[str, Any]) -> DirectOpener | None:
    """The direct path offered by the server running ``scope``, if it offers one."""
    extensions = scope.get("extensions") or {}
    opener: DirectOpener | None = extensions.get(DIRECT_EXTENSION)
    return opener
