"""The agent's WebSocket: a picows client carrying the yamux byte stream.

Binary (and continuation) frames are fed, from picows' frame callback, to a
:class:`~visiona.yamux.MessageTransport`; the session's coalesced writes leave at once
as binary messages (picows' send only queues them on the socket), and the session
holds its data while picows' write buffer is over its high-water mark. No task runs
per tunnel: a message in either direction costs a callback, not a task wake-up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from picows import (
    WSCloseCode,
    WSFrame,
    WSInvalidStatusError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from visiona.agent.credentials import AgentAuthError
from visiona.yamux import MessageTransport
from visiona.yamux.frames import Buffer

_LOGGER = logging.getLogger(__name__)
_MAX_MESSAGE = 1024 * 1024
_WRITE_HIGH = 4 * 1024 * 1024
_WRITE_LOW = 1024 * 1024


class TunnelSocket(WSListener):
    """The picows listener of one tunnel connection."""

    def __init__(self) -> None:
        """Start unconnected; :func:`open_tunnel_socket` wires it up."""
        super().__init__()
        self.feed = MessageTransport(
            self._send, self._close, abort=self._abort, max_message=_MAX_MESSAGE
        )
        self.close_code: int | None = None
        self.close_reason = ""
        self.disconnected = asyncio.Event()
        self._ws: WSTransport | None = None

    # -- picows callbacks ---------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        """Remember the transport; let a few messages queue before pausing (picows callback)."""
        self._ws = transport
        # The default 64 KiB high-water mark pauses after every 1 MiB message until the
        # socket buffer is nearly empty: sending and draining would never overlap.
        transport.underlying_transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Feed binary payloads; answer a close frame (picows callback)."""
        kind = frame.msg_type
        if kind in {WSMsgType.BINARY, WSMsgType.CONTINUATION}:
            self.feed.feed_data(frame.get_payload_as_bytes())
        elif kind == WSMsgType.CLOSE:
            code = frame.get_close_code()
            message = frame.get_close_message() or b""
            self.close_code = int(code.value)
            self.close_reason = message.decode("utf-8", "replace")
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif kind == WSMsgType.TEXT:
            transport.send_close(WSCloseCode.UNSUPPORTED_DATA, b"binary messages only")
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:  # noqa: ARG002 - picows signature
        """End the session (picows callback)."""
        self.feed.connection_lost(None)
        self.disconnected.set()

    def pause_writing(self) -> None:
        """picows' buffer is full: the session holds its data (picows callback)."""
        self.feed.pause_writing()

    def resume_writing(self) -> None:
        """picows' buffer drained (picows callback)."""
        self.feed.resume_writing()

    # -- MessageTransport callables -----------------------------------------------
    def _send(self, data: Buffer) -> None:
        if self._ws is None or self.disconnected.is_set():
            raise ConnectionError("the tunnel WebSocket is closed")
        self._ws.send(WSMsgType.BINARY, data)

    def _close(self) -> None:
        if self._ws is not None and not self.disconnected.is_set():
            self._ws.send_close(WSCloseCode.OK)
            self._ws.disconnect()

    def _abort(self) -> None:
        if self._ws is not None and not self.disconnected.is_set():
            self._ws.disconnect(graceful=False)


async def open_tunnel_socket(
    url: str, token: str, *, handshake_timeout: float = 10.0
) -> TunnelSocket:
    """Upgrade to the tunnel WebSocket at ``url`` as the holder of session ``token``.

    Raises :class:`AgentAuthError` when the server answers 401/403 before the upgrade,
    :class:`UpgradeRefusedError` for another status, and :class:`ConnectionError` when
    the server closes the connection before answering (a node stopping: transient).
    """
    try:
        _transport, listener = await ws_connect(
            TunnelSocket,
            url,
            extra_headers={"Authorization": f"Bearer {token}"},
            websocket_handshake_timeout=handshake_timeout,
            max_frame_size=16 * 1024 * 1024,
            enable_auto_pong=True,
        )
    except WSInvalidStatusError as err:
        status = _status_of(err)
        if status in {401, 403}:
            raise AgentAuthError(status, "session token") from err
        raise UpgradeRefusedError(status, _retry_after_of(err)) from err
    if not isinstance(listener, TunnelSocket):  # picows returns no listener then
        raise ConnectionError("the server closed the connection during the tunnel upgrade")
    return listener


class UpgradeRefusedError(ConnectionError):
    """The server answered the upgrade with an HTTP status (transient: 503 pacing, a
    draining node...), with its ``Retry-After`` in seconds when it gave one."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        """Name the status (and the delay asked for)."""
        asked = f" (retry after {retry_after:g} s)" if retry_after is not None else ""
        super().__init__(f"tunnel upgrade refused with HTTP {status}{asked}")
        self.status = status
        self.retry_after = retry_after


def _retry_after_of(err: Any) -> float | None:
    """``Retry-After`` in seconds (0-3600) from a refused upgrade, if it carried one."""
    headers = getattr(getattr(err, "response", None), "headers", None) or {}
    value = next((v for k, v in dict(headers).items() if k.lower() == "retry-after"), None)
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or seconds != seconds:  # noqa: PLR0124 - the NaN test
        return None
    return min(3600.0, max(0.0, seconds))


def _status_of(err: Any) -> int:
    response = getattr(err, "response", None)
    return int(getattr(response, "status", 0) or 0)
