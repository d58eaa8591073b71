"""Dialling one node link: the picows WebSocket, the mutual handshake, the yamux session.

:func:`dial` connects to a peer's ``/internal/v1/link`` (TCP connect bounded by the
cluster connect timeout), sends this node's proof of the internal token once the
peer's nonce is known, and returns a yamux client session only when the peer's own
proof checks out (docs/tunnel-protocol.md §18). After that, binary frames are fed to
a :class:`~visiona.yamux.MessageTransport` from picows' callback and the session's
writes leave as binary messages at once: no task runs per link.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from typing import TYPE_CHECKING

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from visiona.cluster.linkwire import (
    CLOSE_AUTH_FAILED,
    LINK_PATH,
    NODE_HEADER,
    NONCE_HEADER,
    NONCE_SIZE,
    parse_nonce,
    proof,
    proof_matches,
)
from visiona.yamux import Config, MessageTransport, Session

if TYPE_CHECKING:
    from picows import WSUpgradeRequest, WSUpgradeResponse
    from picows.url import WSParsedURL

    from visiona.yamux.frames import Buffer

_LOGGER = logging.getLogger(__name__)
MAX_MESSAGE = 1024 * 1024
_WRITE_HIGH = 4 * 1024 * 1024
_WRITE_LOW = 1024 * 1024
#: seconds a peer may take to upgrade and prove itself once connected
HANDSHAKE_TIMEOUT = 10.0


def _retrieve(future: asyncio.Future[Session]) -> None:
    if not future.cancelled():
        future.exception()


def link_config(keepalive_interval: float, keepalive_timeout: float) -> Config:
    """The yamux settings of a node link (both sides): wide windows, many streams."""
    return Config(
        accept_backlog=1024,
        keepalive_interval=keepalive_interval,
        keepalive_timeout=keepalive_timeout,
        max_stream_window=16 * 1024 * 1024,
    )


class LinkError(ConnectionError):
    """The link to a peer node could not be set up (or is closed)."""


class LinkAuthError(LinkError):
    """The handshake failed: one of the two nodes does not hold the same internal token."""


class _LinkSocket(WSListener):
    """picows listener of one link: the handshake's last message, then the yamux bytes."""

    def __init__(
        self, token: str, dialer_nonce: bytes, acceptor_nonce: bytes | None, config: Config
    ) -> None:
        super().__init__()
        self._token = token
        self._dialer_nonce = dialer_nonce
        self._acceptor_nonce = acceptor_nonce
        self._config = config
        self._ws: WSTransport | None = None
        self._feed: MessageTransport | None = None
        self.ready: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        # A failure nobody awaits any more (the dial timed out) is not worth a warning.
        self.ready.add_done_callback(_retrieve)

    def on_ws_connected(self, transport: WSTransport) -> None:
        """Send this side's proof (picows callback)."""
        self._ws = transport
        transport.underlying_transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)
        if self._acceptor_nonce is None:
            self._fail(LinkAuthError("the peer sent no nonce (not a visionA node?)"))
            return
        mine = proof(
            self._token,
            dialer=True,
            dialer_nonce=self._dialer_nonce,
            acceptor_nonce=self._acceptor_nonce,
        )
        transport.send(WSMsgType.BINARY, mine)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Check the peer's proof, then feed the session (picows callback)."""
        kind = frame.msg_type
        if kind in {WSMsgType.BINARY, WSMsgType.CONTINUATION}:
            if self._feed is not None:
                self._feed.feed_data(frame.get_payload_as_bytes())
            elif not self.ready.done():
                self._check(frame.get_payload_as_bytes())
        elif kind == WSMsgType.CLOSE:
            code = int(frame.get_close_code().value)
            if code == CLOSE_AUTH_FAILED:
                self._fail(LinkAuthError("the peer refused this node's proof"), close=False)
            else:
                self._fail(LinkError(f"the peer closed the link ({code})"), close=False)
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif kind == WSMsgType.TEXT:
            self._fail(LinkError("text message on the link"), close=False)
            transport.send_close(WSCloseCode.UNSUPPORTED_DATA, b"binary messages only")
            transport.disconnect()

    def _check(self, given: bytes) -> None:
        assert self._acceptor_nonce is not None  # noqa: S101 - checked when connected
        expected = proof(
            self._token,
            dialer=False,
            dialer_nonce=self._dialer_nonce,
            acceptor_nonce=self._acceptor_nonce,
        )
        if not proof_matches(expected, given):
            self._fail(LinkAuthError("the peer could not prove it holds the internal token"))
            return
        self._feed = MessageTransport(
            self._send, self._close, abort=self._abort, max_message=MAX_MESSAGE
        )
        self.ready.set_result(Session(self._feed, client=True, config=self._config))

    def _fail(self, err: LinkError, *, close: bool = True) -> None:
        if not self.ready.done():
            self.ready.set_exception(err)
        if close and self._ws is not None and self._feed is None:
            self._ws.send_close(WSCloseCode(CLOSE_AUTH_FAILED), b"link authentication failed")
            self._ws.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:  # noqa: ARG002 - picows signature
        """End the session (picows callback)."""
        if not self.ready.done():
            self.ready.set_exception(LinkError("the peer closed the link during the handshake"))
        if self._feed is not None:
            self._feed.connection_lost(None)

    def pause_writing(self) -> None:
        """picows' buffer is full: the session holds its data (picows callback)."""
        if self._feed is not None:
            self._feed.pause_writing()

    def resume_writing(self) -> None:
        """picows' buffer drained (picows callback)."""
        if self._feed is not None:
            self._feed.resume_writing()

    def _send(self, data: Buffer) -> None:
        if self._ws is None or self._ws.is_disconnected:
            raise ConnectionError("the link WebSocket is closed")
        self._ws.send(WSMsgType.BINARY, data)

    def _close(self) -> None:
        if self._ws is not None and not self._ws.is_disconnected:
            self._ws.send_close(WSCloseCode.OK)
            self._ws.disconnect()

    def _abort(self) -> None:
        if self._ws is not None and not self._ws.is_disconnected:
            self._ws.disconnect(graceful=False)


async def _connected_socket(host: str, port: int, connect_timeout: float) -> socket.socket:
    """A TCP socket connected to ``host:port`` within ``connect_timeout`` (raises OSError)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)  # noqa: FBT003 - the socket API
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.sock_connect(sock, address)
        except (OSError, TimeoutError) as err:
            sock.close()
            last = err if isinstance(err, OSError) else OSError(f"connect timed out ({host})")
            continue
        return sock
    raise last


async def dial(
    url: str,
    *,
    token: str,
    node_id: str,
    config: Config,
    connect_timeout: float,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> Session:
    """Open and authenticate a link to the node at base ``url``; its yamux session.

    The TCP connect is bounded by ``connect_timeout`` (a node that is down or
    unreachable fails fast); the upgrade and the proofs by ``handshake_timeout`` (a
    busy peer may take a moment to answer). Raises :class:`LinkAuthError` when either
    side's proof fails, :class:`LinkError` for anything else.
    """
    ws_url = "ws" + url.removeprefix("http") + LINK_PATH
    nonce = secrets.token_bytes(NONCE_SIZE)

    def factory(_request: WSUpgradeRequest, response: WSUpgradeResponse) -> _LinkSocket:
        return _LinkSocket(token, nonce, parse_nonce(response.headers.get(NONCE_HEADER)), config)

    async def connect(parsed: WSParsedURL) -> socket.socket:
        return await _connected_socket(parsed.host, parsed.port, connect_timeout)

    transport: WSTransport | None = None
    try:
        async with asyncio.timeout(handshake_timeout):
            transport, listener = await ws_connect(
                factory,
                ws_url,
                extra_headers={NONCE_HEADER: nonce.hex(), NODE_HEADER: node_id},
                websocket_handshake_timeout=handshake_timeout,
                max_frame_size=16 * 1024 * 1024,
                enable_auto_pong=True,
                socket_factory=connect,
            )
            assert isinstance(listener, _LinkSocket)  # noqa: S101 - the factory builds it
            return await listener.ready
    except LinkError:
        raise
    except TimeoutError as err:
        if transport is not None:
            transport.disconnect(graceful=False)
        raise LinkError("no handshake in time") from err
    except Exception as err:  # picows raises its own connect and upgrade errors
        if transport is not None:
            transport.disconnect(graceful=False)
        raise LinkError(f"{type(err).__name__}: {err}") from err
