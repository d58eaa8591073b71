"""Routes of the tunnel feature: the agent's WebSocket tunnel and the proxy to devices.

The proxy has two routes: the public one (``/api/v1/devices/{id}/proxy/{path}``),
which asks the cluster where the device's tunnel is (:class:`~visiona.tunnel.relay.Relay`),
and the internal one another node forwards to (``/internal/v1/devices/{id}/proxy/{path}``,
:data:`internal_router`), which only looks at this node's own tunnels.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from visiona.auth.dependencies import Proxier, require
from visiona.cluster.dependencies import INTERNAL_PREFIX, InternalCaller
from visiona.cluster.forwarding import (
    CLIENT_HEADER,
    KEY_HEADER,
    ORG_HEADER,
    PREFIX_HEADER,
    PROTO_HEADER,
    TOKEN_HEADER,
    USER_HEADER,
)
from visiona.kit.database import Database, map_db_error
from visiona.kit.deps import runtime_of
from visiona.kit.direct import direct_route, path_uuid
from visiona.kit.errors import AppError, CsrfError, NotFoundError, UnauthorizedError
from visiona.kit.http import error_responses
from visiona.kit.jsonout import JSONOut
from visiona.kit.logs import end_incomplete_on_purpose
from visiona.kit.upgrades import was_admitted
from visiona.orgs.permissions import Permission
from visiona.tokens.batch import SessionChecks
from visiona.tokens.service import DeviceIdentity, authenticate_device
from visiona.tunnel.dependencies import HUB, RELAY, RelayDep
from visiona.tunnel.errors import (
    DeviceBusyError,
    DeviceOfflineError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    ForbiddenByAgentError,
    ReservedPathError,
)
from visiona.tunnel.target import InvalidProxyPathError, forward_target
from visiona.tunnel.tcp_endpoints import internal_router as internal_tcp_router
from visiona.tunnel.tcp_endpoints import router as tcp_router

_LOGGER = logging.getLogger(__name__)
PROXY_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_OURS = {
    h.encode()
    for h in (
        TOKEN_HEADER,
        USER_HEADER,
        ORG_HEADER,
        KEY_HEADER,
        CLIENT_HEADER,
        PROTO_HEADER,
        PREFIX_HEADER,
    )
}

router = APIRouter()
#: The routes other nodes forward to (``/internal/v1/…``; never exposed publicly).
internal_router = APIRouter(prefix=INTERNAL_PREFIX, include_in_schema=False)
# ``/internal/v1/devices/{id}/tcp/{port}``: a TCP forward carried from another node
internal_router.include_router(internal_tcp_router)
# TCP forwards (`/devices/{id}/tcp/{port}`): a WebSocket route of the same feature
router.include_router(tcp_router)


def _bearer(websocket: WebSocket) -> str | None:
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


async def _identify(db: Database, checks: SessionChecks, token: str | None) -> DeviceIdentity:
    try:
        # a hot read on the driver (no unit of work, no BEGIN/COMMIT on a connect), shared
        # with the other upgrades checked at the same time, before the WebSocket upgrade
        # (the tunnel outlives any transaction)
        return await authenticate_device(db, token, checks=checks)
    except AppError:
        raise
    except Exception as err:
        mapped = map_db_error(err)
        if mapped is None:
            raise
        raise mapped from err


@router.websocket("/agent/tunnel", name="agent_tunnel")
async def agent_tunnel(websocket: WebSocket) -> None:
    """The agent's tunnel: ``Authorization: Bearer <session token>`` is checked before the
    upgrade (401 with an error body otherwise); then the WebSocket carries a yamux session
    in which this server is the client (see docs/tunnel-protocol.md)."""
    hub = HUB.of(websocket.app)
    try:
        # 503 + Retry-After from memory: paced, at capacity, draining (asked already by
        # `visiona serve`'s HTTP protocol when it marked the upgrade admitted)
        hub.open_upgrade(admitted=was_admitted(websocket.scope["headers"]))
    except AppError as err:
        await _deny(websocket, err)
        return
    try:
        try:
            identity = await _identify(
                runtime_of(websocket).db, hub.session_checks, _bearer(websocket)
            )
        except AppError as err:
            hub.count_upgrade(str(err.status_code))
            await _deny(websocket, err)
            return
        try:
            await websocket.accept()
        except (WebSocketDisconnect, OSError):  # the agent gave up while its token was checked
            hub.upgrade_abandoned(identity.device_id)
            return
    finally:
        hub.close_upgrade()
    await hub.serve(websocket, identity)


async def _deny(websocket: WebSocket, err: AppError) -> None:
    """Answer the upgrade with ``err`` as an HTTP error (no handshake)."""
    await websocket.send_denial_response(
        JSONOut(err.body(), status_code=err.status_code, headers=err.headers or None)
    )
    end_incomplete_on_purpose()  # a denial is a complete answer; uvicorn thinks not


async def proxy(
    device_id: uuid.UUID,
    path: str,
    request: Request,
    principal: Proxier,
) -> Response:
    """Forward the request through the device's tunnel to its agent's local service and
    stream the answer back. Not your device → 404; not connected → 502 ``device_offline``;
    no response head in time → 504 ``device_timeout``; a target under ``/visiona/`` (the
    agent's own paths, e.g. deployments), in any encoding or letter case → 403
    ``reserved_path``; a ``..`` segment or a control character → 400 ``bad_request``;
    ``VISIONA_PROXY_MAX_INFLIGHT_PER_DEVICE`` requests already in flight to the device,
    or (``VISIONA_PROXY_DURING_DEPLOY=refuse``) a deployment in progress or a busy
    device → 429 ``device_busy`` with ``Retry-After`` and ``error.reason``
    (``inflight``, ``deploying``, ``busy``). A request the agent's policy refuses is
    the agent's own 403 ``forbidden_by_agent``, relayed.
    The device receives the decoded path re-encoded canonically, ``//`` and ``.``
    collapsed."""
    target, prefix = forward_target(request, path)
    # The relay is read directly: no dependency to solve for it.
    return await RELAY.of(request.app).to_device(
        request,
        device_id=device_id,
        user_id=principal.user_id,
        org_id=principal.org_id,
        target=target,
        prefix=prefix,
        api_key_id=principal.api_key_id,
    )


async def proxy_request(request: Request) -> Response:
    """The proxy route's handler: it parses what FastAPI would solve for :func:`proxy`
    (whose signature documents the route) and calls it, off FastAPI's dependency
    machinery (visiona/kit/direct.py). The order of checks is FastAPI's: the path's
    device id (422), then the caller (401, 403 CSRF)."""
    device_id = path_uuid(request, "device_id")
    principal = await require(Permission.PROXY)(request)
    return await proxy(device_id, request.path_params["path"], request, principal)


async def internal_proxy(
    device_id: uuid.UUID,
    path: str,
    request: Request,
    caller: InternalCaller,
    relay: RelayDep,
) -> Any:
    """A request forwarded by another node: proxy it through this node's tunnel only."""
    target, _ = forward_target(request, path)  # normalised again: never trust the hop
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
    return await relay.here(
        request,
        device_id=device_id,
        user_id=caller.user_id,
        org_id=caller.org_id,
        target=target,
        prefix=prefix,
        api_key_id=caller.api_key_id,
    )


internal_router.add_api_route(
    "/devices/{device_id}/proxy/{path:path}", internal_proxy, methods=PROXY_METHODS
)


_PROXY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(
        InvalidProxyPathError,
        UnauthorizedError,
        CsrfError,
        ReservedPathError,
        ForbiddenByAgentError,
        NotFoundError,
        DeviceOfflineError,
        DeviceUnreachableError,
        DeviceTimeoutError,
        DeviceBusyError,
    ),
    200: {"description": "Whatever the device's local service answers, streamed."},
}
# One route per method, so each OpenAPI operation has its own id; documented from
# `proxy`, served by `proxy_request`.
_ProxyRoute = direct_route(proxy_request)
for _method in PROXY_METHODS:
    router.add_api_route(
        "/devices/{device_id}/proxy/{path:path}",
        proxy,
        methods=[_method],
        operation_id=f"proxy_to_device_{_method.lower()}",
        tags=["devices"],
        summary=f"Proxy a {_method} request to the device",
        response_model=None,
        responses=_PROXY_RESPONSES,
        route_class_override=_ProxyRoute,
    )
