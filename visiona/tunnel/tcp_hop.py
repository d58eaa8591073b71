"""A TCP forward landing on a node that does not hold the device's tunnel: one hop.

The node the caller reached has checked the caller, the device and the port; it opens
a WebSocket to the owner node's internal route (``/internal/v1/devices/{id}/tcp/{port}``,
the shared internal token and the original user in headers), which admits and serves
the forward as if the caller had come to it. This node then copies messages both ways
unchanged (binary data, the empty half-close messages) and closes the caller's
WebSocket with the owner's close code and reason. An owner's refusal before its
upgrade is answered to the caller as it came (status and body); an owner that cannot
be reached is 502 ``device_offline``. Nothing is buffered beyond one message per
direction (each side's WebSocket flow control holds the rest).

The node link (one multiplexed connection between nodes) will carry this hop later;
until then it is one WebSocket per forward between the two nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from visiona.cluster.forwarding import INTERNAL_PREFIX
from visiona.kit.logs import end_incomplete_on_purpose
from visiona.tunnel.errors import DeviceOfflineError
from visiona.wire import CLOSE_FORWARD_UNREACHABLE

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from visiona.cluster.registry import Owner
    from visiona.cluster.service import Peer
    from visiona.kit.settings import Settings

_LOGGER = logging.getLogger(__name__)
#: close codes an endpoint may not send (they only describe what happened locally)
_RESERVED_CLOSES = {1005, 1006, 1015}


def _ws_url(owner: Owner, path: str) -> str:
    base = owner.url
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return f"{base}{INTERNAL_PREFIX}{path}"


async def hop(
    settings: Settings,
    websocket: WebSocket,
    peer: Peer,
    path: str,
    *,
    user_id: uuid.UUID,
    org_id: uuid.UUID,
    client: str | None,
    api_key_id: uuid.UUID | None = None,
) -> None:
    """Carry the caller's forward (``path``: ``/devices/{id}/tcp/{port}``) to ``peer``."""
    owner = peer.owner
    headers = peer.internal_headers(
        user_id=user_id, org_id=org_id, client=client, api_key_id=api_key_id
    )
    try:
        upstream = await connect(
            _ws_url(owner, path),
            additional_headers=headers,
            max_size=None,
            compression=None,
            open_timeout=settings.cluster_connect_timeout + settings.forward_connect_timeout,
            ping_interval=None,  # the caller's and the owner's keepalives are enough
            user_agent_header=None,
        )
    except InvalidStatus as err:
        answer = err.response
        await websocket.send_denial_response(
            Response(
                answer.body,
                status_code=answer.status_code,
                headers={
                    k: v
                    for k, v in answer.headers.raw_items()
                    if k.lower() in {"content-type", "retry-after"}
                },
            )
        )
        end_incomplete_on_purpose()
        return
    except (OSError, TimeoutError, InvalidHandshake) as err:
        _LOGGER.warning(
            "cluster: node %s holding a forward's device is unreachable: %s",
            owner.node_id,
            type(err).__name__,
        )
        error = DeviceOfflineError("The server node holding the device's tunnel is unreachable.")
        await websocket.send_denial_response(
            Response(
                content=_json(error.body()),
                status_code=error.status_code,
                media_type="application/json",
            )
        )
        end_incomplete_on_purpose()
        return
    await websocket.accept()
    await _pipe(websocket, upstream)


def _json(body: object) -> bytes:
    import json  # noqa: PLC0415 - only for this rare answer

    return json.dumps(body).encode()


async def _pipe(websocket: WebSocket, upstream: ClientConnection) -> None:
    """Copy messages both ways until the owner closes; close the caller the same way."""

    async def from_caller() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    await upstream.close()
                    return
                data = message.get("bytes")
                await upstream.send(data if data is not None else message.get("text", ""))

    caller = asyncio.get_running_loop().create_task(from_caller())
    try:
        with contextlib.suppress(ConnectionClosed):
            async for message in upstream:
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(message)
    except (WebSocketDisconnect, RuntimeError, OSError):
        await upstream.close()  # the caller went away: the owner ends the forward
        return
    finally:
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await caller
    rcvd = upstream.protocol.close_rcvd
    if rcvd is None or rcvd.code in _RESERVED_CLOSES:
        code, reason = CLOSE_FORWARD_UNREACHABLE, "the node holding the device's tunnel went away"
    else:
        code, reason = rcvd.code, rcvd.reason
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code, reason)
