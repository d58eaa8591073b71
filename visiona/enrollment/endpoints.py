"""HTTP routes for enrollment keys and the agent's enrolment (HTTP in/out only).

The enrolment opens its own unit of work after the rate check (a refused attempt holds
none); the other routes use the per-request unit of work.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, Request, Response, status

from visiona.auth.dependencies import EnrollmentAdmin
from visiona.devices.schemas import PairResponse
from visiona.devices.tags import InvalidTagError, ReservedTagError, TooManyTagsError
from visiona.enrollment import service
from visiona.enrollment.repository import EnrollmentKey
from visiona.enrollment.schemas import (
    EnrollmentKeyCreate,
    EnrollmentKeyCreated,
    EnrollmentKeyList,
    EnrollmentKeyOut,
    EnrollRequest,
)
from visiona.kit.deps import Conn, DatabaseDep, LimiterDep, SettingsDep, client_address
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

_LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix="/enrollment-keys", tags=["enrollment keys"])
agent_router = APIRouter(prefix="/agent", tags=["agent"])


def _out(key: EnrollmentKey) -> EnrollmentKeyOut:
    return EnrollmentKeyOut(
        id=key.id,
        name=key.name,
        max_uses=key.max_uses,
        uses=key.uses,
        tags={str(k): str(v) for k, v in key.tags.items()},
        name_template=key.name_template,
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrollmentKeyCreated,
    summary="Create an enrollment key",
    responses=error_responses(
        UnauthorizedError,
        CsrfError,
        ReservedTagError,
        InvalidTagError,
        TooManyTagsError,
        ValidationFailedError,
    ),
)
async def create_enrollment_key(
    body: EnrollmentKeyCreate, principal: EnrollmentAdmin, conn: Conn
) -> EnrollmentKeyCreated:
    """A reusable `vek_…` key for `visiona agent --enroll-key`: it pairs up to `max_uses`
    PCs within `expires_in_hours`, applies `tags` to each device and names it by
    `name_template`. The key enrols PCs into the organisation it was made in. The
    plaintext is in this answer only (stored as sha256)."""
    issued = await service.create_key(
        conn,
        principal.org_id,
        principal.user_id,
        actor=principal.audit_actor,
        name=body.name,
        max_uses=body.max_uses,
        expires_in_hours=body.expires_in_hours,
        tags=body.tags,
        name_template=body.name_template,
    )
    out = _out(issued.record)
    return EnrollmentKeyCreated(**out.model_dump(), key=issued.key)


@router.get(
    "",
    response_model=EnrollmentKeyList,
    summary="List the organisation's enrollment keys",
    responses=error_responses(UnauthorizedError, ValidationFailedError),
)
async def list_enrollment_keys(
    principal: EnrollmentAdmin, conn: Conn, page: PageParams
) -> EnrollmentKeyList:
    """The organisation's enrollment keys (revoked, expired and used-up ones too) with
    their use counts; never the plaintext."""
    found = await service.list_keys(conn, principal.org_id, page)
    return EnrollmentKeyList(items=[_out(k) for k in found.items], next_cursor=found.next_cursor)


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Revoke an enrollment key",
    responses=error_responses(UnauthorizedError, CsrfError, NotFoundError, ValidationFailedError),
)
async def revoke_enrollment_key(
    key_id: uuid.UUID, principal: EnrollmentAdmin, conn: Conn
) -> Response:
    """Revoke the key (idempotent): it enrols no more PCs; the devices it enrolled stay
    paired. Another organisation's or an unknown key → 404."""
    await service.revoke_key(conn, principal.org_id, key_id, actor=principal.audit_actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@agent_router.post(
    "/enroll",
    status_code=status.HTTP_201_CREATED,
    response_model=PairResponse,
    summary="Enrol a PC with a reusable enrollment key",
    responses=error_responses(
        UnauthorizedError,
        ConflictError,
        RateLimitedError,
        InvalidTagError,
        TooManyTagsError,
        ValidationFailedError,
    ),
)
async def enroll(
    body: EnrollRequest,
    request: Request,
    db: DatabaseDep,
    settings: SettingsDep,
    limiter: LimiterDep,
) -> PairResponse:
    """Count one use of the key, create (or re-use, same organisation and serial) the
    device in the key's organisation, apply the key's tags, name it by the key's
    template and issue a `vst_…` session token, in one transaction: the same answer as
    `/agent/pair`. An invalid, unknown, expired, revoked or used-up key → the same 401.
    Limited per client address and per key (429). A device already carrying more tags
    than the key's would leave room for → 422 `too_many_tags` (the use is not
    counted)."""
    await service.check_enroll_rate(limiter, settings, client_address(request), body.enrollment_key)
    # unit of work: its own, opened after the rate check (a refused attempt holds none)
    async with db.transaction() as conn:
        enrolled = await service.enroll(
            conn,
            settings,
            enrollment_key=body.enrollment_key,
            serial_number=body.serial_number,
            device_type=body.device_type,
            name=body.name,
        )
    _LOGGER.info(
        "device %s enrolled with enrollment key %s (%s)",
        enrolled.device_id,
        enrolled.key_id,
        "new device" if enrolled.new_device else "existing device",
    )
    return PairResponse(
        device_id=enrolled.device_id,
        session_token=enrolled.session_token,
        session_token_id=enrolled.session_token_id,
        expires_at=enrolled.expires_at,
    )
