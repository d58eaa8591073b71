"""HTTP routes of webhook endpoints (HTTP in/out only).

Each route needs :attr:`Permission.WEBHOOKS` (admin, owner, or an API key with the
``admin`` scope) in the organisation the request acts in; another organisation's
endpoint is a 404. The routes use the per-request unit of work.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from visiona.auth.dependencies import Principal, require
from visiona.kit.deps import Conn, runtime_of
from visiona.kit.errors import CsrfError, NotFoundError, UnauthorizedError, ValidationFailedError
from visiona.kit.http import error_responses
from visiona.kit.pagination import PageParams
from visiona.orgs.permissions import Permission
from visiona.webhooks import service, ssrf
from visiona.webhooks.repository import Delivery, Endpoint
from visiona.webhooks.schemas import (
    DeliveryList,
    DeliveryOut,
    DeliveryState,
    QueuedTestEvent,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
    WebhookUpdate,
)

_LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
WebhookAdmin = Annotated[Principal, Depends(require(Permission.WEBHOOKS))]


async def _vet(request: Request, url: str | None) -> None:
    """Refuse a target on a loopback, private, link-local or metadata address (after DNS
    resolution) unless ``VISIONA_WEBHOOK_ALLOW_PRIVATE``; before the unit of work opens,
    so no transaction waits on DNS. Every delivery attempt checks again (rebinding)."""
    if url is not None:
        settings = runtime_of(request).settings
        await ssrf.vet_url(url, allow_private=settings.webhook_allow_private)


async def _vetted_create(request: Request, body: WebhookCreate) -> WebhookCreate:
    await _vet(request, body.url)
    return body


async def _vetted_update(request: Request, body: WebhookUpdate) -> WebhookUpdate:
    await _vet(request, body.url)
    return body


#: The request's body, its URL vetted (after the caller's check: declared after it).
VettedCreate = Annotated[WebhookCreate, Depends(_vetted_create)]
VettedUpdate = Annotated[WebhookUpdate, Depends(_vetted_update)]
_NO_CONTENT: dict[str, Any] = {
    "status_code": status.HTTP_204_NO_CONTENT,
    "response_class": Response,
}


def _out(endpoint: Endpoint) -> WebhookOut:
    return WebhookOut(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        events=list(endpoint.events),
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        disabled_at=endpoint.disabled_at,
        failing_since=endpoint.failing_since,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def _delivery(delivery: Delivery) -> DeliveryOut:
    return DeliveryOut(
        id=str(delivery.seq),
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        state=delivery.state,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at,
        last_attempt_at=delivery.last_attempt_at,
        last_status=delivery.last_status,
        last_latency_ms=delivery.last_latency_ms,
        last_response=delivery.last_response,
        last_error=delivery.last_error,
        delivered_at=delivery.delivered_at,
        created_at=delivery.created_at,
        payload=delivery.payload,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    summary="Create a webhook endpoint",
    responses=error_responses(
        UnauthorizedError,
        CsrfError,
        service.InvalidWebhookUrlError,
        ssrf.WebhookTargetForbiddenError,
        service.UnknownEventTypeError,
        service.TooManyWebhooksError,
        ValidationFailedError,
    ),
)
async def create_webhook(principal: WebhookAdmin, body: VettedCreate, conn: Conn) -> WebhookCreated:
    """An endpoint of the organisation you act in: every event of its `events` is
    POSTed to `url`, signed per Standard Webhooks with its `secret` (in this answer only:
    keep it). At most 20 endpoints per organisation (409 `too_many_webhooks`). A URL
    whose host is or resolves to a loopback, private, link-local or metadata address is
    422 `webhook_target_forbidden` (unless the operator allows them)."""
    created = await service.create_endpoint(
        conn,
        org_id=principal.org_id,
        created_by=principal.api_key_id or principal.user_id,
        actor=principal.audit_actor,
        url=body.url,
        events=list(body.events),
        description=body.description,
    )
    return WebhookCreated(**_out(created.endpoint).model_dump(), secret=created.secret)


@router.get(
    "",
    response_model=WebhookList,
    summary="Webhook endpoints of the organisation",
    responses=error_responses(UnauthorizedError, ValidationFailedError),
)
async def list_webhooks(principal: WebhookAdmin, conn: Conn, page: PageParams) -> WebhookList:
    """Every endpoint of the organisation, newest first, with its state; never a secret."""
    found = await service.list_endpoints(conn, principal.org_id, page)
    return WebhookList(items=[_out(e) for e in found.items], next_cursor=found.next_cursor)


@router.get(
    "/{webhook_id}",
    response_model=WebhookOut,
    summary="One webhook endpoint",
    responses=error_responses(UnauthorizedError, NotFoundError, ValidationFailedError),
)
async def get_webhook(webhook_id: uuid.UUID, principal: WebhookAdmin, conn: Conn) -> WebhookOut:
    """The endpoint (never its secret); another organisation's → 404."""
    return _out(await service.get_endpoint(conn, principal.org_id, webhook_id))


@router.patch(
    "/{webhook_id}",
    response_model=WebhookOut,
    summary="Edit, disable or re-enable a webhook endpoint",
    responses=error_responses(
        UnauthorizedError,
        CsrfError,
        NotFoundError,
        service.InvalidWebhookUrlError,
        ssrf.WebhookTargetForbiddenError,
        service.UnknownEventTypeError,
        ValidationFailedError,
    ),
)
async def update_webhook(
    webhook_id: uuid.UUID, principal: WebhookAdmin, body: VettedUpdate, conn: Conn
) -> WebhookOut:
    """Change the fields given. `enabled: false` stops deliveries (`disabled_reason`
    `disabled by a user`; queued deliveries wait); `enabled: true` clears the disabled
    state and the failure run, and sends what is queued (audit `webhook.enabled`).
    Other changes are audited as `webhook.updated` with the fields changed."""
    endpoint = await service.update_endpoint(
        conn,
        principal.org_id,
        webhook_id,
        actor=principal.audit_actor,
        changes=body.model_dump(exclude_unset=True),
    )
    return _out(endpoint)


@router.delete(
    "/{webhook_id}",
    **_NO_CONTENT,
    summary="Delete a webhook endpoint",
    responses=error_responses(UnauthorizedError, CsrfError, NotFoundError, ValidationFailedError),
)
async def delete_webhook(webhook_id: uuid.UUID, principal: WebhookAdmin, conn: Conn) -> Response:
    """Delete the endpoint with its delivery log; queued deliveries are dropped.
    Another organisation's → 404."""
    await service.delete_endpoint(conn, principal.org_id, webhook_id, actor=principal.audit_actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{webhook_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=QueuedTestEvent,
    summary="Send a test event",
    responses=error_responses(
        UnauthorizedError,
        CsrfError,
        NotFoundError,
        service.WebhookDisabledError,
        ValidationFailedError,
    ),
)
async def send_test_event(
    webhook_id: uuid.UUID, principal: WebhookAdmin, conn: Conn
) -> QueuedTestEvent:
    """Queue one `webhook.test` event for this endpoint only, due now; follow it in the
    delivery log. A disabled endpoint → 409 `webhook_disabled`."""
    queued = await service.send_test(conn, principal.org_id, webhook_id)
    return QueuedTestEvent(delivery_id=str(queued.delivery_id), event_id=queued.event_id)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=DeliveryList,
    summary="The delivery log of a webhook endpoint",
    responses=error_responses(UnauthorizedError, NotFoundError, ValidationFailedError),
)
async def list_deliveries(
    webhook_id: uuid.UUID,
    principal: WebhookAdmin,
    conn: Conn,
    page: PageParams,
    state: Annotated[
        DeliveryState | None, Query(description="Only deliveries in this state.")
    ] = None,
) -> DeliveryList:
    """The endpoint's deliveries, newest first: state, attempts, the last answer's
    status, latency and first 1 KiB, or the error of the last attempt."""
    found = await service.list_deliveries(conn, principal.org_id, webhook_id, page, state=state)
    return DeliveryList(items=[_delivery(d) for d in found.items], next_cursor=found.next_cursor)
