"""Routes of the tunnel feature: the agent's WebSocket tunnel and the proxy to devices."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from visiona.audit import service as audit
from visiona.auth.dependencies import CurrentPrincipal, current_principal
from visiona.cluster.service import forward_proxy
from visiona.devices import service as devices_service
from visiona.kit.database import map_db_error
from visiona.kit.deps import runtime_of
from visiona.kit.direct import direct_route, path_uuid
from visiona.kit.errors import AppError, CsrfError, NotFoundError, UnauthorizedError
from visiona.kit.http import error_responses
from visiona.kit.logs import end_incomplete_on_purpose
from visiona.kit.runtime import Runtime
from visiona.tokens.service import DeviceIdentity, authenticate_device
from visiona.tunnel.errors import (
    DeviceBusyError,
    DeviceOfflineError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    ForbiddenByAgentError,
    ReservedPathError,
)
from visiona.tunnel.hub import TunnelHub
from visiona.tunnel.proxy import ProxyExchange, ProxyResponse
from visiona.tunnel.target import (
    InvalidProxyPathError,
    cloud_prefix,
    device_target,
    sandboxed_headers,
)
from visiona.tunnel.tcp_endpoints import router as tcp_router

_LOGGER = logging.getLogger(__name__)
PROXY_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

router = APIRouter()
# TCP forwards (`/devices/{id}/tcp/{port}`): a WebSocket route of the same feature
router.include_router(tcp_router)


def hub_of(runtime: Runtime) -> TunnelHub:
    """The application's tunnel hub (built in the lifespan)."""
    if runtime.hub is None:
        raise RuntimeError("the tunnel hub is not running")
    return runtime.hub


def _bearer(websocket: WebSocket) -> str | None:
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


async def _identify(runtime: Runtime, token: str | None) -> DeviceIdentity:
    try:
        # unit of work: its own, before the WebSocket upgrade (the tunnel outlives any transaction)
        async with runtime.db.transaction() as conn:
            return await authenticate_device(conn, token)
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
    runtime: Runtime = websocket.app.state.runtime
    try:
        identity = await _identify(runtime, _bearer(websocket))
    except AppError as err:
        await websocket.send_denial_response(
            JSONResponse(err.body(), status_code=err.status_code, headers=err.headers or None)
        )
        end_incomplete_on_purpose()  # a denial is a complete answer; uvicorn thinks not
        return
    await websocket.accept()
    await hub_of(runtime).serve(websocket, identity)


def _forward_target(request: Request, path: str) -> tuple[bytes, str]:
    """The path and query to request on the device, and the cloud prefix in front of it."""
    query: bytes = request.scope.get("query_string", b"")
    return device_target(path, query), cloud_prefix(path, request.scope["path"])


async def proxy(
    device_id: uuid.UUID,
    path: str,
    request: Request,
    principal: CurrentPrincipal,
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
    # The runtime is read directly: no dependency to solve for it.
    runtime = runtime_of(request)
    target, prefix = _forward_target(request, path)
    if hub_of(runtime).get(device_id) is None:
        forwarded = await forward_proxy(
            runtime,
            request,
            device_id=device_id,
            target=target,
            prefix=prefix,
            user_id=principal.user_id,
        )
        if forwarded is not None:
            return forwarded
    return await proxy_local(
        runtime,
        request,
        device_id=device_id,
        user_id=principal.user_id,
        target=target,
        prefix=prefix,
    )


async def proxy_request(request: Request) -> Response:
    """The proxy route's handler: it parses what FastAPI would solve for :func:`proxy`
    (whose signature documents the route) and calls it, off FastAPI's dependency
    machinery (visiona/kit/direct.py). The order of checks is FastAPI's: the path's
    device id (422), then the caller (401, 403 CSRF)."""
    device_id = path_uuid(request, "device_id")
    principal = await current_principal(request)
    return await proxy(device_id, request.path_params["path"], request, principal)


async def proxy_local(
    runtime: Runtime,
    request: Request,
    *,
    device_id: uuid.UUID,
    user_id: uuid.UUID,
    target: bytes,
    prefix: str,
) -> Response:
    """Proxy through this node's tunnel of the device (no tunnel here → 502 offline)."""
    link = hub_of(runtime).get(device_id)
    if link is None or link.owner_user_id != user_id:
        # unit of work: its own, only when the device is not connected (a proxy holds none)
        async with runtime.db.transaction() as conn:
            await devices_service.get_device(conn, user_id, device_id)
        raise DeviceOfflineError()
    release = hub_of(runtime).admit(link)  # 429 device_busy, from memory
    exchange = ProxyExchange(
        link.session,
        request,
        target,
        prefix,
        runtime.settings.proxy_response_timeout,
        on_done=release,
    )
    try:
        status, headers, framing = await exchange.open()
    except BaseException:
        release()
        raise
    if status == 403 and _REFUSED in headers:
        await _record_refusal(
            runtime,
            request,
            owner_id=link.owner_user_id,
            user_id=user_id,
            device_id=device_id,
            target=target,
        )
    return ProxyResponse(exchange, status, sandboxed_headers(headers), framing)


#: The header the agent puts on the answers its policy gives instead of the local service.
_REFUSED = (b"x-visiona-refused", b"policy")


async def _record_refusal(
    runtime: Runtime,
    request: Request,
    *,
    owner_id: uuid.UUID,
    user_id: uuid.UUID,
    device_id: uuid.UUID,
    target: bytes,
) -> None:
    """Audit ``proxy.forbidden_by_agent`` in its own short transaction (best effort: the
    agent's answer is relayed even when the trail cannot be written)."""
    path = target.split(b"?", 1)[0].decode("ascii", "replace")
    client = request.client.host if request.client else None
    try:
        # unit of work: its own, only when the agent refused (the proxy holds none)
        async with runtime.db.transaction() as conn:
            await audit.record(
                conn,
                "proxy.forbidden_by_agent",
                actor=audit.Actor.user(user_id),
                owner_id=owner_id,
                target_id=device_id,
                device_id=device_id,
                detail={"method": request.method, "path": path},
                client_addr=client,
            )
    except Exception as err:  # noqa: BLE001 - the trail is best effort here; logged
        _LOGGER.warning(
            "audit: refusal of device %s not recorded: %s", device_id, type(err).__name__
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
