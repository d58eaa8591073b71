"""The cluster's own internal route: ``/internal/v1/link``, the persistent node link.

A peer node upgrades to a WebSocket here with its nonce; this node answers with its
own, checks the peer's proof of the internal token (constant time, through
:meth:`~visiona.cluster.service.ClusterNode.link_proof`: the token stays inside the
cluster object) and only then sends its proof back (docs/tunnel-protocol.md §18). A
link that cannot authenticate is closed with 4401 and logged once; a single node
(no cluster) answers the upgrade 404. The authenticated WebSocket carries a yamux
session in which this node is the server; each stream is served by the handler its
kind names (:class:`~visiona.cluster.linkserver.LinkHandlers`, filled by the
composition root with the features' handlers).

The features' own internal HTTP routes (the tunnel's proxy, deployments' transfer)
stay for older nodes during a rolling upgrade and for operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from fastapi import APIRouter
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket  # at run time: FastAPI reads the annotation

from visiona.cluster.dependencies import CLUSTER, INTERNAL_PREFIX
from visiona.cluster.link import HANDSHAKE_TIMEOUT, MAX_MESSAGE
from visiona.cluster.linkwire import (
    CLOSE_AUTH_FAILED,
    NODE_HEADER,
    NONCE_HEADER,
    NONCE_SIZE,
    parse_nonce,
    proof_matches,
)
from visiona.cluster.service import ClusterNode
from visiona.kit.errors import NotFoundError
from visiona.kit.logs import end_incomplete_on_purpose
from visiona.kit.websocket import direct_opener
from visiona.yamux import ByteTransport, FeedTransport, Session

#: The cluster's internal route (``/internal/v1/link``; never exposed publicly).
internal_router = APIRouter(prefix=INTERNAL_PREFIX, include_in_schema=False)


async def link_endpoint(websocket: WebSocket) -> None:
    """A peer node's link: mutual proof of the internal token, then a yamux session."""
    cluster = CLUSTER.of(websocket.app)
    theirs = parse_nonce(websocket.headers.get(NONCE_HEADER))
    if not isinstance(cluster, ClusterNode) or theirs is None:
        await websocket.send_denial_response(
            JSONResponse(NotFoundError().body(), status_code=NotFoundError.status_code)
        )
        end_incomplete_on_purpose()  # a denial is a complete answer; uvicorn thinks not
        return
    acceptor = cluster.forwarder.acceptor
    host = websocket.client.host if websocket.client else "unknown"
    peer = f"{host} ({websocket.headers.get(NODE_HEADER, '?')[:64]})"
    ours = secrets.token_bytes(NONCE_SIZE)
    await websocket.accept(
        headers=[
            (NONCE_HEADER.encode(), ours.hex().encode()),
            (NODE_HEADER.encode(), cluster.registry.node_id.encode()),
        ]
    )
    given: bytes | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            message = await websocket.receive()
            given = message.get("bytes") if message["type"] == "websocket.receive" else None
    expected = cluster.link_proof(dialer=True, dialer_nonce=theirs, acceptor_nonce=ours)
    if not proof_matches(expected, given):
        acceptor.refused(peer, "no valid proof of the internal token")
        with contextlib.suppress(Exception):  # the peer may be gone already
            await websocket.close(CLOSE_AUTH_FAILED, "link authentication failed")
        return
    await websocket.send_bytes(
        cluster.link_proof(dialer=False, dialer_nonce=theirs, acceptor_nonce=ours)
    )
    await _run_link(websocket, cluster, peer)


async def _run_link(websocket: WebSocket, cluster: ClusterNode, peer: str) -> None:
    """Carry the authenticated link's session until it ends."""
    opener = direct_opener(websocket.scope)
    feed: FeedTransport | None = None
    transport: ByteTransport
    if opener is not None:  # `visiona serve`: the protocol feeds the session itself
        transport = opener(lambda: (1000, ""), MAX_MESSAGE)
    else:

        async def send(data: bytes) -> None:
            await websocket.send({"type": "websocket.send", "bytes": data})

        async def close() -> None:
            await websocket.close()

        feed = FeedTransport(send, close, max_message=MAX_MESSAGE)
        transport = feed
    session = Session(transport, client=False, config=cluster.forwarder.config)
    reader = (
        asyncio.get_running_loop().create_task(_read_loop(websocket, feed))
        if feed is not None
        else None
    )
    try:
        await cluster.forwarder.acceptor.serve(session, peer, cluster.handlers.serve)
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _read_loop(websocket: WebSocket, feed: FeedTransport) -> None:
    """ASGI messages into the session (servers without the direct path)."""
    exc: BaseException | None = None
    try:
        while True:
            message = await websocket.receive()
            data = message.get("bytes") if message["type"] == "websocket.receive" else None
            if data is None:
                break
            feed.feed_data(data)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # noqa: BLE001 - any receive failure ends the link, reported below
        exc = err
    feed.connection_lost(exc)


internal_router.add_api_websocket_route("/link", link_endpoint, name="node_link")

__all__ = ["internal_router", "link_endpoint"]
