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
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.auth.dependencies import CurrentPrincipal, DeviceWriter
from visiona.devices import fleet_service as fleet
from visiona.devices import service
from visiona.devices.dependencies import DevicesDep
from visiona.devices.repository import Device
from visiona.devices.schemas import (
    AgentStatusRequest,
    DeviceCreate,
    DeviceList,
    DeviceOut,
    DeviceUpdate,
    PairRequest,
    PairResponse,
    TagsPatch,
    TagsReplace,
    device_body,
)
from visiona.devices.selectors import InvalidSelectorError
from visiona.devices.tags import InvalidTagError, ReservedTagError, TooManyTagsError
from visiona.kit.clock import utcnow
from visiona.kit.database import Database
from visiona.kit.deps import (
    Conn,
    DatabaseDep,
    DeviceRevokedDep,
    LimiterDep,
    SettingsDep,
    client_address,
)
from visiona.kit.direct import solved_get
from visiona.kit.errors import (
    ConflictError,
    CsrfError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
    ValidationFailedError,
)
from visiona.kit.http import error_responses
from visiona.kit.jsonout import JSONOut
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


@solved_get(
    router,
    "/devices",
    response_model=DeviceList,
    tags=["devices"],
    summary="List your devices",
    responses=error_responses(UnauthorizedError, InvalidSelectorError, ValidationFailedError),
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
    selector: Annotated[
        str | None,
        Query(
            description="A tag selector (Kubernetes label-selector syntax), e.g. "
            "`site=lab,chip in (kl520,kl720),!retired`; a bad one is a 400 "
            "`invalid_selector` with `position` and `reason`.",
            examples=["site=lab,chip in (kl520)"],
        ),
    ] = None,
) -> Response:
    """Your live devices in creation order (oldest first), optionally filtered by status
    and by a tag selector (all filters hold together; pages stay keyset-paginated)."""
    parsed = fleet.parse_selector(selector)
    found = await reads.list(
        conn,
        principal.org_id,
        remote_status=remote_status,
        status=device_status,
        page=page,
        selector=parsed,
    )
    tags = await fleet.tags_of(conn, found.items)
    # DeviceList's fields, encoded by orjson (visiona/kit/jsonout.py)
    return JSONOut(
        {
            "items": [device_body(row, tags[row.id]) for row in found.items],
            "next_cursor": found.next_cursor,
        }
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
    return await _answer(conn, row)


@solved_get(
    router,
    "/devices/{device_id}",
    response_model=DeviceOut,
    tags=["devices"],
    summary="One of your devices",
    responses=error_responses(UnauthorizedError, NotFoundError, ValidationFailedError),
)
async def get_device(
    device_id: uuid.UUID, principal: CurrentPrincipal, db: DatabaseDep, reads: DevicesDep
) -> Response:
    """The device; unknown, deleted or not yours → 404. A device whose tunnel has not been
    seen for three status intervals reads ``remote_status=offline``."""
    # hot reads on the driver (visiona/kit/hotread.py), no unit of work: two statements
    # that need not share a snapshot (the tags of a device deleted in between are harmless);
    # the answer encoded by orjson (visiona/kit/jsonout.py), response_model documents it
    device = await reads.get(db, principal.org_id, device_id)
    return JSONOut(device_body(device, await fleet.tags_of_one(db, device)))


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
    return await _answer(conn, device)


async def _answer(source: Database | AsyncConnection, device: Device) -> DeviceOut:
    """The answer for one device, with its tags."""
    return DeviceOut.of(device, await fleet.tags_of_one(source, device))


_TAG_ERRORS = (
    UnauthorizedError,
    CsrfError,
    ReservedTagError,
    NotFoundError,
    InvalidTagError,
    TooManyTagsError,
    ValidationFailedError,
)


@router.put(
    "/devices/{device_id}/tags",
    response_model=DeviceOut,
    tags=["devices"],
    summary="Replace a device's tags",
    responses=error_responses(*_TAG_ERRORS),
)
async def replace_tags(
    device_id: uuid.UUID,
    body: TagsReplace,
    principal: DeviceWriter,
    conn: Conn,
    reads: DevicesDep,
) -> DeviceOut:
    """Make `tags` the device's tags: the ones not named are removed. Built-in tags
    (`chip`, `type`, `visiona.io/…`) cannot be changed (400 `reserved_tag`; one sent with
    the value it has is ignored, so `tags` can be sent back as read); a bad key or
    value is a 422 `invalid_tag`, more than 32 tags a 422 `too_many_tags`. Records
    `device.tagged` when anything changed. Answers the device."""
    await fleet.replace_tags(
        conn, principal.org_id, device_id, body.tags, actor=principal.audit_actor
    )
    return await _answer(conn, await reads.get(conn, principal.org_id, device_id))


@router.patch(
    "/devices/{device_id}/tags",
    response_model=DeviceOut,
    tags=["devices"],
    summary="Set and remove some of a device's tags",
    responses=error_responses(*_TAG_ERRORS),
)
async def change_tags(
    device_id: uuid.UUID,
    body: TagsPatch,
    principal: DeviceWriter,
    conn: Conn,
    reads: DevicesDep,
) -> DeviceOut:
    """Add or change the tags in `set` and remove the keys in `remove` (a key the device
    does not have is ignored; a key in both is a 422 `invalid_tag`); the other tags stay.
    Errors as for `PUT`. Answers the device."""
    await fleet.change_tags(
        conn,
        principal.org_id,
        device_id,
        set_tags=body.set,
        remove=body.remove,
        actor=principal.audit_actor,
    )
    return await _answer(conn, await reads.get(conn, principal.org_id, device_id))


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
    round trip. `current_model` (when given) is the model of the agent's last successful
    deployment, kept on its PC: when it differs from the record it becomes the device's
    `current_model` (the one before moves to `previous_model`), so the record is right
    even when the server missed a deployment's outcome. Authenticated by
    `Authorization: Bearer <session token>`."""
    await service.report_usb_status(conn, device, body.usb_status, body.busy, body.tcp_ports)
    if body.current_model is not None:
        await fleet.record_current_model(
            conn, device.device_id, body.current_model.id, body.current_model.sha256
        )
    if body.busy is not None:
        hub.report_busy(device.device_id, body.busy)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
