"""The internal routes other nodes forward to (``/internal/v1/…``; never exposed publicly).

Every call carries the shared internal token (checked in constant time; missing or
wrong → 401) and the original user. These routes only look at this node's own
tunnels: a device not here answers 502 ``device_offline`` and is never forwarded again.

- ``/internal/v1/devices/{id}/proxy/{path}``: a proxied request, streamed both ways.
- ``/internal/v1/devices/{id}/tcp/{port}``: a TCP forward (WebSocket) served by this
  node's tunnel (visiona/tunnel/tcp_endpoints.py).
- ``POST /internal/v1/deployments/{id}/transfer``: run a deployment recorded by the
  calling node (the model file in the JSON body) through this node's tunnel; answers
  the final record (200) or the deployment's error (502 with the record).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request

from visiona.cluster.deployments import model_file_of, run_here
from visiona.cluster.forwarding import (
    CLIENT_HEADER,
    INTERNAL_PREFIX,
    PREFIX_HEADER,
    PROTO_HEADER,
    TOKEN_HEADER,
    USER_HEADER,
    token_matches,
)
from visiona.cluster.service import cluster_of
from visiona.deployments import repository as deployments_repository
from visiona.deployments import service as deployments
from visiona.deployments.schemas import DeploymentOut, DeploymentStatus
from visiona.kit.deps import RuntimeDep
from visiona.kit.errors import (
    BadRequestError,
    NotFoundError,
    StorageUnavailableError,
    UnauthorizedError,
)
from visiona.tunnel.endpoints import PROXY_METHODS, _forward_target, hub_of, proxy_local
from visiona.tunnel.errors import DeviceOfflineError
from visiona.tunnel.tcp_endpoints import internal_router as internal_tcp_router

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
# ``/internal/v1/devices/{id}/tcp/{port}``: a TCP forward carried from another node
router.include_router(internal_tcp_router)


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
        model = model_file_of(body if isinstance(body, dict) else {})
    except ValueError as err:
        raise BadRequestError("Malformed model file.") from err
    storage = runtime.model_storage
    if storage is None:
        raise StorageUnavailableError()
    # unit of work: the record's check only; each state change is its own (as on one node)
    async with runtime.db.transaction() as conn:
        deployment = await deployments_repository.get_deployment(conn, deployment_id)
    if deployment is None or deployment.owner_user_id != user_id:
        raise NotFoundError("Deployment not found.")
    link = hub_of(runtime).get(deployment.device_id)
    if link is None or link.owner_user_id != user_id:
        failed = await deployments.mark(
            runtime.db, deployment.id, DeploymentStatus.FAILED, deployments.OFFLINE_REASON
        )
        raise deployments.DeploymentOfflineError(failed, DeviceOfflineError.default_message)
    record = await run_here(runtime, storage, link, deployment, model)
    if record.status != DeploymentStatus.SUCCEEDED:
        raise deployments.DeploymentFailedError(record)
    return DeploymentOut.model_validate(record)


__all__ = ["TOKEN_HEADER", "router"]
