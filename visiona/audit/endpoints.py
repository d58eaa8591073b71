"""HTTP routes of the audit trail (HTTP in/out only): the caller's trail and a device's.

A member sees the events of the organisation they act in: its members' actions, and
those of its devices and of the system on their behalf. Another organisation's device
is a 404, exactly
like one that does not exist; a device the caller unpaired keeps its history.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from visiona.audit import service
from visiona.audit.catalogue import ACTIONS, TARGET_TYPES
from visiona.audit.repository import AuditEvent, EventFilter
from visiona.audit.schemas import AuditEventList, AuditEventOut
from visiona.auth.dependencies import CurrentPrincipal
from visiona.devices import service as devices
from visiona.kit.deps import Conn
from visiona.kit.errors import NotFoundError, UnauthorizedError, ValidationFailedError
from visiona.kit.http import error_responses
from visiona.kit.pagination import Page, PageParams

router = APIRouter(tags=["audit"])

_ACTION_LIST = ", ".join(f"`{name}`" for name in ACTIONS)
_TARGET_LIST = ", ".join(f"`{name}`" for name in sorted(TARGET_TYPES))


class _Filters:
    """The query parameters both lists take."""

    def __init__(
        self,
        action: Annotated[
            str | None, Query(max_length=64, description=f"One action: {_ACTION_LIST}.")
        ] = None,
        target_type: Annotated[
            str | None, Query(max_length=32, description=f"One target type: {_TARGET_LIST}.")
        ] = None,
        target_id: Annotated[
            str | None, Query(max_length=64, description="The target's id (with target_type).")
        ] = None,
        since: Annotated[
            datetime | None, Query(description="Events at or after this instant (ISO 8601).")
        ] = None,
        until: Annotated[
            datetime | None, Query(description="Events before this instant (ISO 8601).")
        ] = None,
    ) -> None:
        self.action = action
        self.target_type = target_type
        self.target_id = target_id
        self.since = since
        self.until = until

    def spec(self, org_id: uuid.UUID, device_id: uuid.UUID | None = None) -> EventFilter:
        return EventFilter(
            org_id=org_id,
            device_id=device_id,
            action=self.action,
            target_type=self.target_type,
            target_id=self.target_id,
            since=self.since,
            until=self.until,
        )


Filters = Annotated[_Filters, Depends()]


def _page(found: Page[AuditEvent]) -> AuditEventList:
    return AuditEventList(
        items=[AuditEventOut.model_validate(event) for event in found.items],
        next_cursor=found.next_cursor,
    )


@router.get(
    "/audit-events",
    response_model=AuditEventList,
    summary="Your audit trail",
    responses=error_responses(UnauthorizedError, ValidationFailedError),
)
async def list_events(
    principal: CurrentPrincipal, conn: Conn, page: PageParams, filters: Filters
) -> AuditEventList:
    """The organisation's events, newest first: what its members did (``actor_email``
    names who), what its devices did, and what the server did to them (tunnels,
    deployments). Filters combine (all must hold)."""
    spec = filters.spec(principal.org_id)
    return _page(await service.list_events(conn, spec, page))


@router.get(
    "/devices/{device_id}/audit-events",
    response_model=AuditEventList,
    summary="A device's history",
    responses=error_responses(UnauthorizedError, NotFoundError, ValidationFailedError),
)
async def list_device_events(
    device_id: uuid.UUID,
    principal: CurrentPrincipal,
    conn: Conn,
    page: PageParams,
    filters: Filters,
) -> AuditEventList:
    """The events that concern the device, newest first (an unpaired device of yours keeps
    its history). Another organisation's device → 404."""
    await devices.require_owned_ever(conn, principal.org_id, device_id)
    spec = filters.spec(principal.org_id, device_id)
    return _page(await service.list_events(conn, spec, page))
