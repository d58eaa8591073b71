"""The dialing side of the node link: one long-lived yamux session per peer node.

A :class:`NodeLink` is opened on first use to the peer's ``/internal/v1/link`` (a
WebSocket, picows client) and kept: every exchange forwarded to that node is one
stream of its session. The link authenticates once, both ways (docs/tunnel-protocol.md
§18): the dialer proves it holds the internal token and accepts the session only if
the peer proves it too, so user traffic never goes to an impostor. yamux keepalive
watches the link; when it drops, the link is dialled again with backoff while it is
in use (``idle_after`` seconds since the last exchange), and any exchange that finds
no link dials at once (one dial at a time per peer, shared by every waiting exchange).

A failure is logged once per outage (the next ones at debug level), and a refused
handshake (a different token on either side) holds further dials back for a while.
:class:`LinkPool` holds one link per peer URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
from typing import TYPE_CHECKING, Any

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
from visiona.yamux import Config, MessageTransport, Session, YamuxError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from picows import WSUpgradeRequest, WSUpgradeResponse
    from picows.url import WSParsedURL

    from visiona.yamux import Stream
    from visiona.yamux.frames import Buffer

_LOGGER = logging.getLogger(__name__)
MAX_MESSAGE = 1024 * 1024
_WRITE_HIGH = 4 * 1024 * 1024
_WRITE_LOW = 1024 * 1024
_RETRY_FIRST = 0.05
_RETRY_MAX = 5.0
_REFUSED_FIRST = 1.0
_REFUSED_MAX = 30.0
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


class NodeLink:
    """The link to one peer node: dialled on first use, kept, dialled again with backoff."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        node_id: str,
        connect_timeout: float,
        config: Config,
        idle_after: float = 300.0,
    ) -> None:
        """Prepare the link to the node at base ``url`` (nothing is dialled yet)."""
        self.url = url
        self._token = token
        self._node_id = node_id
        self._timeout = connect_timeout
        self._config = config
        self._idle_after = idle_after
        self._session: Session | None = None
        self._dialing: asyncio.Task[Session] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._last_used = 0.0
        self._failing = False
        self._refused_until = 0.0
        self._refused_delay = _REFUSED_FIRST
        self._closed = False

    def __repr__(self) -> str:
        """Name the peer and the session."""
        return f"<NodeLink {self.url} {self._session!r}>"

    @property
    def up(self) -> bool:
        """Whether an authenticated session to the peer is open now."""
        return self._session is not None and not self._session.is_closed

    @property
    def idle(self) -> bool:
        """Whether the link went unused for longer than it is kept dialled."""
        return asyncio.get_running_loop().time() - self._last_used > self._idle_after

    def discard(self) -> None:
        """Stop a link that is down (no session to close): its redialling ends."""
        self._closed = True
        for task in (self._keeper, self._dialing):
            if task is not None and not task.done():
                task.cancel()

    async def session(self) -> Session:
        """The live session to the peer, dialling it if needed (raises :class:`LinkError`)."""
        loop = asyncio.get_running_loop()
        self._last_used = loop.time()
        session = self._session
        if session is not None and not session.is_closed:
            return session
        return await self._ensure(loop)

    async def _ensure(self, loop: asyncio.AbstractEventLoop) -> Session:
        if self._closed:
            raise LinkError("the link pool is closed")
        if loop.time() < self._refused_until:
            raise LinkAuthError("the peer refused this node's link recently")
        if self._dialing is None:
            self._dialing = loop.create_task(self._dial())
        # Shielded: an exchange that gives up does not cancel the dial the others share.
        return await asyncio.shield(self._dialing)

    async def _dial(self) -> Session:
        loop = asyncio.get_running_loop()
        try:
            session = await dial(
                self.url,
                token=self._token,
                node_id=self._node_id,
                config=self._config,
                connect_timeout=self._timeout,
            )
        except LinkAuthError as err:
            self._refused_until = loop.time() + self._refused_delay
            self._refused_delay = min(self._refused_delay * 2, _REFUSED_MAX)
            self._report(
                "cluster: link to %s refused: %s (is VISIONA_INTERNAL_TOKEN the same on "
                "every node?)",
                err,
            )
            raise
        except LinkError as err:
            self._report("cluster: link to %s failed: %s", err)
            raise
        finally:
            self._dialing = None
        if self._closed:
            await session.close()
            raise LinkError("the link pool is closed")
        self._refused_delay = _REFUSED_FIRST
        if self._failing:
            _LOGGER.info("cluster: link to %s is up again", self.url)
        else:
            _LOGGER.info("cluster: link to %s is up", self.url)
        self._failing = False
        self._session = session
        self._keeper = loop.create_task(self._keep(session))
        return session

    def _report(self, message: str, err: LinkError) -> None:
        """Log a failure once per outage; the repeats at debug level."""
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        _LOGGER.log(level, message, self.url, err)

    async def _keep(self, session: Session) -> None:
        """When ``session`` ends, dial again with backoff while the link is in use."""
        await session.closed.wait()
        if self._closed:
            return
        _LOGGER.info("cluster: link to %s lost (%s)", self.url, session.close_reason)
        loop = asyncio.get_running_loop()
        delay = _RETRY_FIRST
        while not self._closed and loop.time() - self._last_used < self._idle_after:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret
            current = self._session
            if current is not session and current is not None and not current.is_closed:
                return  # an exchange dialled it meanwhile
            try:
                await self._ensure(loop)
            except LinkError:
                delay = min(delay * 2, _RETRY_MAX)
                continue
            return

    async def close(self) -> None:
        """Stop redialling and close the session (GoAway, then the WebSocket)."""
        self._closed = True
        for task in (self._keeper, self._dialing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, LinkError):
                    await task
        if self._session is not None:
            await self._session.close()


class LinkPool:
    """One :class:`NodeLink` per peer URL, made on first use."""

    def __init__(
        self,
        *,
        token: str,
        node_id: str,
        connect_timeout: float,
        config: Config,
    ) -> None:
        """Prepare an empty pool; links authenticate with ``token``."""
        self._token = token
        self._node_id = node_id
        self._timeout = connect_timeout
        self._config = config
        self._links: dict[str, NodeLink] = {}

    def link(self, url: str) -> NodeLink:
        """The link to the node at base ``url`` (created, not dialled, on first use)."""
        link = self._links.get(url)
        if link is None:
            self._prune()
            link = NodeLink(
                url,
                token=self._token,
                node_id=self._node_id,
                connect_timeout=self._timeout,
                config=self._config,
            )
            self._links[url] = link
        return link

    def _prune(self) -> None:
        """Forget the links that are down and were not used for a while (old node URLs)."""
        for url, link in list(self._links.items()):
            if link.idle and not link.up:
                del self._links[url]
                link.discard()

    def stats(self) -> dict[str, Any]:
        """How many links the pool holds and how many are up (for logs and tests)."""
        return {"links": len(self._links), "up": sum(link.up for link in self._links.values())}

    async def close(self) -> None:
        """Close every link."""
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


class LinkAcceptor:
    """The accepting side's bookkeeping: the links peers opened to this node.

    :meth:`serve` runs one authenticated session's accept loop (in the task serving
    its WebSocket), each stream in a task of its own; :meth:`close` ends them all.
    """

    def __init__(self) -> None:
        """No link yet."""
        self._sessions: set[Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused: set[str] = set()

    def refused(self, peer: str, reason: str) -> None:
        """Log a link refused from ``peer`` once (until a link from it authenticates)."""
        level = logging.DEBUG if peer in self._refused else logging.WARNING
        self._refused.add(peer)
        _LOGGER.log(
            level,
            "cluster: link from %s refused: %s (is VISIONA_INTERNAL_TOKEN the same on every node?)",
            peer,
            reason,
        )

    async def serve(
        self, session: Session, peer: str, handler: Callable[[Stream], Coroutine[Any, Any, None]]
    ) -> None:
        """Accept ``session``'s streams and run ``handler`` on each until the link ends."""
        self._refused.discard(peer)
        self._sessions.add(session)
        _LOGGER.info("cluster: link from %s is up", peer)
        try:
            while True:
                try:
                    stream = await session.accept_stream()
                except YamuxError:
                    break
                task = asyncio.get_running_loop().create_task(handler(stream))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await session.wait_closed()
        finally:
            self._sessions.discard(session)
            _LOGGER.info("cluster: link from %s ended (%s)", peer, session.close_reason)

    @property
    def links(self) -> int:
        """How many peers' links are open now."""
        return len(self._sessions)

    async def close(self) -> None:
        """Close every accepted link; cancel the exchanges still running."""
        await asyncio.gather(*(s.close() for s in list(self._sessions)), return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
