"""One agent tunnel: a yamux client session over an accepted ASGI WebSocket.

The WebSocket is a byte pipe (message boundaries mean nothing). Under ``visiona
serve`` the tunnel takes the protocol's direct path (visiona/kit/websocket.py):
received binary messages are fed to a :class:`~visiona.yamux.MessageTransport` from
the protocol's own callback and the session's coalesced writes leave as frames at
once, with no task per tunnel. Under any other ASGI server the messages go through
ASGI: a reader task feeds a :class:`~visiona.yamux.FeedTransport`, whose outgoing
bytes are coalesced while a send is in flight. Either way a frame's header and body
(and usually many frames) leave in one message of at most ``max_message`` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING

from visiona.kit.websocket import direct_opener
from visiona.wire import CLOSE_NORMAL, CLOSE_UNSUPPORTED
from visiona.yamux import ByteTransport, Config, FeedTransport, Session

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

_LOGGER = logging.getLogger(__name__)


class TunnelLink:
    """A live tunnel of one device: its WebSocket, its yamux session and its health."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        device_id: uuid.UUID,
        owner_user_id: uuid.UUID,
        token_hash: str,
        org_id: uuid.UUID | None = None,
        config: Config,
        max_message: int,
        session_token_id: uuid.UUID | None = None,
    ) -> None:
        """Start the yamux client session on ``websocket`` (already accepted)."""
        self.device_id = device_id
        self.owner_user_id = owner_user_id
        #: The organisation the device belongs to: proxies and forwards check it.
        self.org_id = org_id
        self.token_hash = token_hash
        #: The public id of the session token the tunnel authenticated with.
        self.session_token_id = session_token_id
        client = websocket.client
        #: The agent's address (after the trusted proxies), for the audit trail.
        self.client_addr: str | None = client.host if client else None
        #: Set when this server closed the tunnel: the close code and reason it sent.
        self.closed_by_server: tuple[int, str] | None = None
        self.connected_at = time.time()
        #: False while keepalives go unanswered (the device reads ``reconnecting``).
        self.healthy = True
        #: This tunnel's generation (set by the hub): carried in its status writes and
        #: in the registry, so an older tunnel's late writes never win.
        self.epoch = 0
        #: Admission (visiona/tunnel/admission.py): proxied requests in flight, deployments
        #: in progress through this tunnel, and what the agent last said of its service.
        self.inflight = 0
        self.deployments = 0
        self.busy = False
        self._ws = websocket
        self._close_code = CLOSE_NORMAL
        self._close_reason = ""
        opener = direct_opener(websocket.scope)
        self._transport: ByteTransport
        self._feed: FeedTransport | None = None
        if opener is not None:
            self._transport = opener(self._close_args, max_message)
        else:
            self._feed = FeedTransport(self._send, self._close_websocket, max_message=max_message)
            self._transport = self._feed
        self.session = Session(self._transport, client=True, config=config)
        self._seen_bytes = 0

    def __repr__(self) -> str:
        """Name the device and the session state."""
        return f"<TunnelLink device={self.device_id} {self.session!r}>"

    async def _send(self, data: bytes) -> None:
        await self._ws.send({"type": "websocket.send", "bytes": data})

    @property
    def direct(self) -> bool:
        """True when the server's protocol feeds the session itself (no ASGI messages)."""
        return self._feed is None

    def _close_args(self) -> tuple[int, str]:
        return self._close_code, self._close_reason

    async def _close_websocket(self) -> None:
        await self._ws.close(self._close_code, self._close_reason)

    def traffic_since_last_check(self) -> bool:
        """Whether bytes arrived from the agent since the previous call."""
        received = self.session.bytes_received
        moved = received != self._seen_bytes
        self._seen_bytes = received
        return moved

    async def run(self) -> None:
        """Pump received messages into the session until either side ends; then clean up."""
        if self._feed is None:  # the protocol feeds the session itself
            await self.session.closed.wait()
            await self.session.wait_closed()
            return
        reader = asyncio.get_running_loop().create_task(self._read_loop(self._feed))
        try:
            await self.session.closed.wait()
            await self.session.wait_closed()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read_loop(self, transport: FeedTransport) -> None:
        receive = self._ws.receive
        exc: BaseException | None = None
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    data = message.get("bytes")
                    if data is None:
                        await self.close(CLOSE_UNSUPPORTED, "binary messages only")
                        return
                    transport.feed_data(data)
                elif kind == "websocket.disconnect":
                    break
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - any receive failure ends the tunnel, reported below
            exc = err
        transport.connection_lost(exc)

    async def close(self, code: int, reason: str) -> None:
        """Send GoAway, flush, close the WebSocket with ``code``/``reason`` and end the session."""
        if self.session.is_closed:
            return
        self._close_code, self._close_reason = code, reason
        if self.closed_by_server is None:
            self.closed_by_server = (code, reason)
        await self.session.close()
