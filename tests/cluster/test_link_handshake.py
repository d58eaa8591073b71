"""The dialing side's handshake against peers that are not what they claim (real sockets).

The honest peer (a node) is covered by tests/cluster/test_link.py with real processes;
here the peer is a small WebSocket app that plays an impostor.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from testkit.live import serve_app
from testkit.servers import free_port
from visiona.cluster.linkdial import LinkAuthError, LinkError, dial, link_config
from visiona.cluster.linkwire import (
    CLOSE_AUTH_FAILED,
    LINK_PATH,
    NONCE_HEADER,
    parse_nonce,
    proof,
    proof_matches,
)

TOKEN = "link-handshake-test-token-0123456789"
CONFIG = link_config(5.0, 5.0)


class Seen:
    """What the impostor saw of the dialer."""

    def __init__(self) -> None:
        """Nothing yet."""
        self.proof_valid: bool | None = None
        self.after_proof: list[bytes] = []
        self.close_code: int | None = None
        self.done = asyncio.Event()


def impostor(seen: Seen, *, nonce: bool = True) -> Starlette:
    """A peer that accepts any dialer and answers a proof made with another token."""

    async def endpoint(websocket: WebSocket) -> None:
        theirs = parse_nonce(websocket.headers.get(NONCE_HEADER))
        ours = secrets.token_bytes(32)
        headers = [(NONCE_HEADER.encode(), ours.hex().encode())] if nonce else []
        await websocket.accept(headers=headers)
        try:
            given = await websocket.receive_bytes()
            assert theirs is not None
            expected = proof(TOKEN, dialer=True, dialer_nonce=theirs, acceptor_nonce=ours)
            seen.proof_valid = proof_matches(expected, given)
            wrong = proof(
                "not-the-token-0123456789", dialer=False, dialer_nonce=theirs, acceptor_nonce=ours
            )
            await websocket.send_bytes(wrong)
            while True:
                seen.after_proof.append(await websocket.receive_bytes())
        except WebSocketDisconnect as gone:
            seen.close_code = gone.code
        finally:
            seen.done.set()

    return Starlette(routes=[WebSocketRoute(LINK_PATH, endpoint)])


async def _dial(port: int) -> object:
    return await dial(
        f"http://127.0.0.1:{port}", token=TOKEN, node_id="node-t", config=CONFIG, connect_timeout=5
    )


async def _raises(kind: type[Exception], call: Callable[[], Awaitable[object]]) -> str:
    with pytest.raises(kind) as caught:
        await call()
    return str(caught.value)


async def test_a_peer_that_cannot_prove_the_token_gets_no_session_and_nothing_more() -> None:
    seen = Seen()
    async with serve_app(impostor(seen)) as peer:
        message = await _raises(LinkAuthError, lambda: _dial(peer.port))
        await asyncio.wait_for(seen.done.wait(), 10)
    assert "could not prove" in message
    assert seen.proof_valid is True  # the dialer's own proof was right (and bound to the nonces)
    assert seen.after_proof == []  # no yamux byte, no user traffic, reached the impostor
    assert seen.close_code == CLOSE_AUTH_FAILED


async def test_a_websocket_peer_without_a_nonce_is_not_a_node() -> None:
    seen = Seen()
    async with serve_app(impostor(seen, nonce=False)) as peer:
        message = await _raises(LinkAuthError, lambda: _dial(peer.port))
        await asyncio.wait_for(seen.done.wait(), 10)
    assert "no nonce" in message
    assert seen.proof_valid is None  # the dialer sent no proof to it


async def test_nothing_listening_is_a_link_error_not_a_hang() -> None:
    port = free_port()
    message = await asyncio.wait_for(_raises(LinkError, lambda: _dial(port)), 10)
    assert message
