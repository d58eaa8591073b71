"""HTTP routes for devices and the agent's pair exchange and status report (HTTP in/out only).

Unpair opens its unit of work here, explicitly, so that the revocation hooks
(the tunnel's, to close a live tunnel) runs only after the revocation has
committed; the pair exchange opens its own after the rate check. The other routes use
the per-request unit of work.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from visiona.auth.dependencies import CurrentPrincipal, DeviceWriter
from visiona.devices import service
from visiona.devices.dependencies import DevicesDep
from visiona.devices.schemas import (
    AgentStatusRequest,
    DeviceCreate,
    DeviceList,
    DeviceOut,
    DeviceUpdate,
    PairRequest,
    PairResponse,
)
from visiona.kit.clock import utcnow
from visiona.kit.deps import (
    Conn,
    DatabaseDep,
    DeviceRevokedDep,
    LimiterDep,
    SettingsDep,
    client_address,
)
from visiona.kit.errors import (
    ConflictError,
    CsrfError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
    ValidationFailedError,
)
from visiona.kit.http import error_responses
from visiona.kit.pagination import PageParams
from visiona.tokens import service as tokens
from visiona.tokens.dependencies import CurrentDevice
from visiona.tunnel.dependencies import HubDep
from visiona.wire import RemoteStatus, UsbStatus

_LOGGER = logging.getLogger(__name__)

router = APIRouter()
agent_router = APIRouter(prefix="/agent", tags=["agent"])

_NO_CONTENT: dict[str, Any] = {
    "status_code": status.HTTP_204_NO_CONTENT,
    "response_class": Response,
}


# -- devices ------------------------------------------------------------------


@router.get(
    "/devices",
    response_model=DeviceList,
    tags=["devices"],
    summary="List your devices",
    responses=error_responses(UnauthorizedError, ValidationFailedError),
)
async def list_devices(  # noqa: PLR0917 - FastAPI injects query parameters by name
    principal: CurrentPrincipal,
    conn: Conn,
    reads: DevicesDep,
    page: PageParams,
    remote_status: Annotated[RemoteStatus | None, Query(description="Tunnel status.")] = None,
    device_status: Annotated[
        UsbStatus | None, Query(alias="status", description="USB status.")
    ] = None,
) -> DeviceList:
    """Your live devices in creation order (oldest first), optionally filtered by status."""
    found = await reads.list(
        conn, principal.org_id, remote_status=remote_status, status=device_status, page=page
    )
    return DeviceList(
        items=[DeviceOut.model_validate(row) for row in found.items], next_cursor=found.next_cursor
    )


@router.post(
    "/devices",
    status_code=status.HTTP_201_CREATED,
    response_model=DeviceOut,
    tags=["devices"],
    summary="Register a device",
    responses=error_responses(UnauthorizedError, CsrfError, ConflictError, ValidationFailedError),
)
async def create_device(body: DeviceCreate, principal: DeviceWriter, conn: Conn) -> DeviceOut:
    """Register a device by hand. A live device of the organisation with the same serial
    → 409."""
    row = await service.create_device(
        conn,
        principal.org_id,
        principal.user_id,
        name=body.name,
        serial_number=body.serial_number,
        device_type=body.device_type,
    )
    return DeviceOut.model_validate(row)


@router.get(
    "/devices/{device_id}",
    response_model=DeviceOut,
    tags=["devices"],
    summary="One of your devices",
    responses=error_responses(UnauthorizedError, NotFoundError, ValidationFailedError),
)
async def get_device(
    device_id: uuid.UUID, principal: CurrentPrincipal, conn: Conn, reads: DevicesDep
) -> DeviceOut:
    """The device; unknown, deleted or not yours → 404. A device whose tunnel has not been
    seen for three status intervals reads ``remote_status=offline``."""
    return DeviceOut.model_validate(await reads.get(conn, principal.org_id, device_id))


@router.patch(
    "/devices/{device_id}",
    response_model=DeviceOut,
    tags=["devices"],
    summary="Rename a device",
    responses=error_responses(UnauthorizedError, CsrfError, NotFoundError, ValidationFailedError),
)
async def rename_device(
    device_id: uuid.UUID,
    body: DeviceUpdate,
    principal: DeviceWriter,
    conn: Conn,
    reads: DevicesDep,
) -> DeviceOut:
    """Change the device's name."""
    device = await reads.rename(
        conn, principal.org_id, device_id, body.name, actor=principal.audit_actor
    )
    return DeviceOut.model_validate(device)


@router.delete(
    "/devices/{device_id}",
    **_NO_CONTENT,
    tags=["devices"],
    summary="Unpair a device",
    responses=error_responses(UnauthorizedError, CsrfError, NotFoundError, ValidationFailedError),
)
async def unpair_device(
    device_id: uuid.UUID, principal: DeviceWriter, db: DatabaseDep, revoked: DeviceRevokedDep
) -> Response:
    """Soft-delete the device and revoke all its pairing and session tokens in one
    transaction; then close its live tunnel. The serial can be paired again later
    (as a new device)."""
    # unit of work: its own, so the revocation hooks run after the commit
    async with db.transaction() as conn:
        result = await service.unpair_device(
            conn, principal.org_id, device_id, actor=principal.audit_actor
        )
    _LOGGER.info(
        "device %s unpaired: %d pairing and %d session tokens revoked",
        device_id,
        len(result.pairing_tokens),
        len(result.session_tokens),
    )
    await revoked(device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- the agent ------------------------------------------------------------------


@agent_router.post(
    "/pair",
    status_code=status.HTTP_201_CREATED,
    response_model=PairResponse,
    summary="Exchange a pairing token for a session token",
    responses=error_responses(
        UnauthorizedError, ConflictError, RateLimitedError, ValidationFailedError
    ),
)
async def pair(
    body: PairRequest,
    request: Request,
    db: DatabaseDep,
    settings: SettingsDep,
    limiter: LimiterDep,
) -> PairResponse:
    """Consume the pairing token, create (or re-use, same owner and serial) the device and
    issue a `vst_…` session token, in one transaction. Any invalid, unknown, expired,
    used or revoked token → the same 401. Limited per client address (429)."""
    await service.check_pair_rate(limiter, settings, client_address(request))
    # unit of work: its own, opened after the rate check (a refused attempt holds none)
    async with db.transaction() as conn:
        paired = await service.pair(
            conn,
            settings,
            pairing_token=body.pairing_token,
            serial_number=body.serial_number,
            device_type=body.device_type,
            name=body.name,
        )
    _LOGGER.info(
        "device %s paired into organisation %s (%s)",
        paired.device_id,
        paired.org_id,
        "new device" if paired.new_device else "existing device",
    )
    return PairResponse(
        device_id=paired.device_id,
        session_token=paired.session_token,
        session_token_id=paired.session_token_id,
        expires_at=paired.expires_at,
    )


@agent_router.post(
    "/session/renew",
    response_model=PairResponse,
    summary="Renew the agent's session token",
    responses=error_responses(UnauthorizedError),
)
async def renew_session(device: CurrentDevice, conn: Conn, settings: SettingsDep) -> PairResponse:
    """Trade the presented `vst_…` session token for a new one of the same device, valid
    VISIONA_SESSION_TOKEN_TTL seconds from now. In one transaction the new token is
    stored with `parent_token_hash` = the old token's hash (and the same `pairing_token_id`) and
    the old token is revoked.
    A revoked, expired or unpaired device's token → 401. The live tunnel stays up."""
    renewed = await tokens.renew_session(conn, settings, device, utcnow())
    _LOGGER.info("device %s renewed its session token", device.device_id)
    return PairResponse(
        device_id=device.device_id,
        session_token=renewed.token,
        session_token_id=renewed.public_id,
        expires_at=renewed.expires_at,
    )


@agent_router.post(
    "/status",
    **_NO_CONTENT,
    summary="Report the dongle's USB status and whether the local service is busy",
    responses=error_responses(UnauthorizedError, ValidationFailedError),
)
async def report_status(
    body: AgentStatusRequest, device: CurrentDevice, conn: Conn, hub: HubDep
) -> Response:
    """Store `usb_status` (online | offline | unknown) as the device's `status`, `busy`
    (when given) as its `busy` flag and `tcp_ports` (when given) as the TCP ports its
    agent allows; the node holding the device's tunnel also keeps the
    flag in memory, so `VISIONA_PROXY_DURING_DEPLOY=refuse` answers 429 without a tunnel
    round trip. Authenticated by `Authorization: Bearer <session token>`."""
    await service.report_usb_status(conn, device, body.usb_status, body.busy, body.tcp_ports)
    if body.busy is not None:
        hub.report_busy(device.device_id, body.busy)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
