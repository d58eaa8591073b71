"""The internal routes other nodes forward to (``/internal/v1/…``; never exposed publicly).

Every call carries the shared internal token (checked in constant time; missing or
wrong → 401) and the original user. These routes only look at this node's own
tunnels: a device not here answers 502 ``device_offline`` and is never forwarded again.

- ``/internal/v1/devices/{id}/proxy/{path}``: a proxied request, streamed both ways.
- ``POST /internal/v1/deployments/{id}/transfer``: run a deployment recorded by the
  calling node (the model file in the JSON body) through this node's tunnel; answers
  the final record (200) or the deployment's error (502 with the record).
- ``/internal/v1/link``: the persistent node link (a WebSocket; visiona/cluster/linkserver.py)
  that nodes of this version use instead of the two routes above.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request

from visiona.cluster.forwarding import (
    CLIENT_HEADER,
    INTERNAL_PREFIX,
    PREFIX_HEADER,
    PROTO_HEADER,
    TOKEN_HEADER,
    USER_HEADER,
    token_matches,
)
from visiona.cluster.linkserver import link_endpoint, transfer_here
from visiona.cluster.service import cluster_of
from visiona.deployments.schemas import DeploymentOut
from visiona.kit.deps import RuntimeDep
from visiona.kit.errors import (
    BadRequestError,
    UnauthorizedError,
)
from visiona.tunnel.endpoints import PROXY_METHODS, _forward_target, proxy_local

_OURS = {
    h.encode() for h in (TOKEN_HEADER, USER_HEADER, CLIENT_HEADER, PROTO_HEADER, PREFIX_HEADER)
}

router = APIRouter(prefix=INTERNAL_PREFIX, include_in_schema=False)


def _caller(request: Request, runtime: RuntimeDep) -> uuid.UUID:
    """Check the internal token; return the forwarded user id."""
    cluster = cluster_of(runtime)
    if cluster is None or not token_matches(cluster.token, request.headers.get(TOKEN_HEADER)):
        raise UnauthorizedError("Missing or invalid internal token.")
    try:
        return uuid.UUID(request.headers.get(USER_HEADER, ""))
    except ValueError as err:
        raise UnauthorizedError("Missing or invalid forwarded user.") from err


async def internal_proxy(
    device_id: uuid.UUID,
    path: str,
    request: Request,
    runtime: RuntimeDep,
) -> Any:
    """A request forwarded by another node: proxy it through this node's tunnel only."""
    user_id = _caller(request, runtime)
    target, _ = _forward_target(request, path)  # normalised again: never trust the hop
    # The device sees the original client, scheme and prefix, not the forwarding node.
    client = request.headers.get(CLIENT_HEADER)
    if client:
        request.scope["client"] = (client, 0)
    proto = request.headers.get(PROTO_HEADER)
    if proto in {"http", "https"}:
        request.scope["scheme"] = proto
    prefix = request.headers.get(PREFIX_HEADER) or "/proxy"
    request.scope["headers"] = [
        (k, v) for k, v in request.scope["headers"] if k.lower() not in _OURS
    ]
    return await proxy_local(
        runtime, request, device_id=device_id, user_id=user_id, target=target, prefix=prefix
    )


router.add_api_route(
    "/devices/{device_id}/proxy/{path:path}", internal_proxy, methods=PROXY_METHODS
)


@router.post("/deployments/{deployment_id}/transfer")
async def internal_transfer(
    deployment_id: uuid.UUID,
    request: Request,
    runtime: RuntimeDep,
) -> DeploymentOut:
    """A deployment recorded by another node: transfer it through this node's tunnel only."""
    user_id = _caller(request, runtime)  # before the body: no detail for an unknown caller
    try:
        body = await request.json()
    except ValueError as err:
        raise BadRequestError("Malformed model file.") from err
    record = await transfer_here(
        runtime, deployment_id, user_id, body if isinstance(body, dict) else {}
    )
    return DeploymentOut.model_validate(record)


router.add_api_websocket_route("/link", link_endpoint, name="node_link")

__all__ = ["TOKEN_HEADER", "router"]
