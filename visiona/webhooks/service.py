"""Use cases of webhook endpoints: create, list, show, edit, delete, test, delivery log.

Every function takes the connection of a unit of work opened at the edge and never
commits; each change records its audit event on the same connection (so the outbox
queues it for the organisation's endpoints in the same transaction too).

Rules (issue 25):

- An endpoint belongs to one organisation (at most :data:`MAX_ENDPOINTS`); its URL is
  ``http``/``https`` with a host, no user:password, at most :data:`MAX_URL_LENGTH`
  characters (where it may point — not loopback, private or metadata addresses — is
  checked when delivering, after DNS resolution).
- Its events are audit actions, families (``device.*``) or ``*`` (and ``webhook.test``,
  which changes nothing: test events go to one endpoint regardless); they are stored
  sorted and distinct, and as one subscription row each (what the outbox matches).
- Its secret (``whsec_`` + base64 of 32 random bytes, the Standard Webhooks format) is
  returned by :func:`create_endpoint` only and never logged.
- Disabled (by a user, or by the server after failing for long): nothing is sent;
  pending deliveries stay queued and are due at once when it is enabled again.
"""

from __future__ import annotations

import base64
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.catalogue import ACTIONS
from visiona.audit.outbox import EVERY_EVENT
from visiona.audit.service import Actor
from visiona.kit.clock import utcnow
from visiona.kit.errors import AppError, ConflictError, NotFoundError
from visiona.kit.pagination import Page, PageRequest
from visiona.orgs import repository as orgs
from visiona.webhooks import repository
from visiona.webhooks.repository import Delivery, Endpoint

_LOGGER = logging.getLogger(__name__)

#: The most endpoints one organisation may have.
MAX_ENDPOINTS = 20
#: The longest URL accepted.
MAX_URL_LENGTH = 2048
#: The prefix of a signing secret (Standard Webhooks).
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
#: The event type of a test event: sent by the test route to one endpoint whatever its
#: subscriptions (naming it among them is allowed and changes nothing).
TEST_EVENT = "webhook.test"
#: ``disabled_reason`` of an endpoint a user disabled.
DISABLED_BY_USER = "disabled by a user"
#: Every family (``device.*``) of the catalogue.
FAMILIES: frozenset[str] = frozenset(f"{name.partition('.')[0]}.*" for name in ACTIONS)


class InvalidWebhookUrlError(AppError):
    """The URL is not an http(s) URL with a host, has user:password, or is too long."""

    status_code = 422
    code = "invalid_webhook_url"
    default_message = "The webhook URL is not valid."


class UnknownEventTypeError(AppError):
    """An event type is neither an action of the catalogue, a family of them, nor ``*``."""

    status_code = 422
    code = "unknown_event_type"
    default_message = "Unknown event type."


class TooManyWebhooksError(ConflictError):
    """The organisation has :data:`MAX_ENDPOINTS` endpoints already."""

    code = "too_many_webhooks"
    default_message = f"An organisation has at most {MAX_ENDPOINTS} webhook endpoints."


class WebhookDisabledError(ConflictError):
    """A test event for a disabled endpoint (enable it first)."""

    code = "webhook_disabled"
    default_message = "The webhook endpoint is disabled; enable it first."


def _not_found() -> NotFoundError:
    return NotFoundError("Webhook endpoint not found.")


def new_secret() -> str:
    """A new signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host and no user:password (422 otherwise)."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrlError(f"The webhook URL is longer than {MAX_URL_LENGTH} characters.")
    if url != url.strip() or any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise InvalidWebhookUrlError(
            "The webhook URL must not contain spaces or control characters."
        )
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as err:
        raise InvalidWebhookUrlError("The webhook URL cannot be parsed.") from err
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidWebhookUrlError("The webhook URL must start with http:// or https://.")
    if not hostname:
        raise InvalidWebhookUrlError("The webhook URL has no host.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidWebhookUrlError("The webhook URL must not carry a user name or password.")
    return url


def check_events(events: list[str]) -> tuple[str, ...]:
    """The distinct, sorted event types of ``events`` (422 ``unknown_event_type`` else)."""
    wanted = {event.strip() for event in events}
    unknown = sorted(
        e
        for e in wanted
        if e not in (EVERY_EVENT, TEST_EVENT) and e not in ACTIONS and e not in FAMILIES
    )
    if unknown:
        raise UnknownEventTypeError(
            f"Unknown event type(s): {', '.join(unknown)[:200]}; use an action of the "
            "catalogue (device.renamed), a family (device.*) or *."
        )
    return tuple(sorted(wanted))


@dataclass(frozen=True, slots=True)
class CreatedEndpoint:
    """A new endpoint and its secret (shown once)."""

    endpoint: Endpoint
    secret: str


async def create_endpoint(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    created_by: uuid.UUID | None,
    actor: Actor,
    url: str,
    events: list[str],
    description: str | None,
) -> CreatedEndpoint:
    """A new enabled endpoint of ``org_id``; records ``webhook.created``."""
    url = check_url(url)
    wanted = check_events(events)
    await orgs.lock_org(conn, org_id)  # the count below holds until the commit
    if await repository.count_endpoints(conn, org_id) >= MAX_ENDPOINTS:
        raise TooManyWebhooksError
    secret = new_secret()
    endpoint = await repository.insert_endpoint(
        conn,
        endpoint_id=uuid.uuid4(),
        org_id=org_id,
        created_by=created_by,
        url=url,
        description=description,
        secret=secret,
        events=wanted,
        now=utcnow(),
    )
    await audit.record(
        conn, "webhook.created", actor=actor, org_id=org_id, target_id=endpoint.id,
        detail={"url": url, "events": list(wanted)},
    )  # fmt: skip
    _LOGGER.info("webhook endpoint %s created in organisation %s", endpoint.id, org_id)
    return CreatedEndpoint(endpoint, secret)


async def list_endpoints(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> Page[Endpoint]:
    """The organisation's endpoints, newest first (never a secret)."""
    return await repository.list_endpoints(conn, org_id, page)


async def get_endpoint(
    conn: AsyncConnection, org_id: uuid.UUID, endpoint_id: uuid.UUID, *, lock: bool = False
) -> Endpoint:
    """The endpoint ``endpoint_id`` of ``org_id``; another organisation's → 404."""
    endpoint = await repository.get_endpoint(conn, org_id, endpoint_id, lock=lock)
    if endpoint is None:
        raise _not_found()
    return endpoint


async def update_endpoint(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    actor: Actor,
    changes: dict[str, Any],
) -> Endpoint:
    """Apply ``changes`` (``url``, ``events``, ``description``, ``enabled``: only those
    given). Enabling a disabled endpoint records ``webhook.enabled`` (and makes its
    queued deliveries due now); any other change records ``webhook.updated`` naming
    the fields that changed."""
    current = await get_endpoint(conn, org_id, endpoint_id, lock=True)
    now = utcnow()
    values: dict[str, Any] = {}
    events: tuple[str, ...] | None = None
    changed: list[str] = []
    if changes.get("url") is not None:
        url = check_url(changes["url"])
        if url != current.url:
            values["url"] = url
            changed.append("url")
    if changes.get("events") is not None:
        wanted = check_events(changes["events"])
        if wanted != current.events:
            events = wanted
            changed.append("events")
    if "description" in changes and changes["description"] != current.description:
        values["description"] = changes["description"]
        changed.append("description")
    enabling = changes.get("enabled") is True and not current.enabled
    disabling = changes.get("enabled") is False and current.enabled
    if enabling:
        values.update(enabled=True, disabled_reason=None, disabled_at=None, failing_since=None)
    elif disabling:
        values.update(enabled=False, disabled_reason=DISABLED_BY_USER, disabled_at=now)
        changed.append("enabled")
    if not values and events is None:
        return current
    values["updated_at"] = now
    await repository.update_endpoint(conn, endpoint_id, values, events=events)
    if enabling:
        await repository.retry_pending_now(conn, endpoint_id, now)
        await audit.record(
            conn, "webhook.enabled", actor=actor, org_id=org_id, target_id=endpoint_id
        )
    if changed:
        await audit.record(
            conn, "webhook.updated", actor=actor, org_id=org_id, target_id=endpoint_id,
            detail={"fields": changed},
        )  # fmt: skip
    return await get_endpoint(conn, org_id, endpoint_id)


async def delete_endpoint(
    conn: AsyncConnection, org_id: uuid.UUID, endpoint_id: uuid.UUID, *, actor: Actor
) -> None:
    """Delete the endpoint and its deliveries (queued ones are not sent); records
    ``webhook.deleted``. Another organisation's → 404."""
    endpoint = await get_endpoint(conn, org_id, endpoint_id, lock=True)
    await repository.delete_endpoint(conn, endpoint_id)
    await audit.record(
        conn, "webhook.deleted", actor=actor, org_id=org_id, target_id=endpoint_id,
        detail={"url": endpoint.url},
    )  # fmt: skip


def payload_of_test(
    event_id: uuid.UUID, org_id: uuid.UUID, endpoint_id: uuid.UUID, now: datetime
) -> dict[str, Any]:
    """The body of a test event (the audit events' format: type, timestamp, data)."""
    return {
        "type": TEST_EVENT,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": {
            "id": str(event_id),
            "org_id": str(org_id),
            "endpoint_id": str(endpoint_id),
            "message": "A test event from visionA: your endpoint is reachable and can "
            "verify the signature.",
        },
    }


@dataclass(frozen=True, slots=True)
class QueuedTest:
    """The delivery of a test event."""

    delivery_id: int
    event_id: uuid.UUID


async def send_test(conn: AsyncConnection, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> QueuedTest:
    """Queue one ``webhook.test`` event for this endpoint only, due now (409
    ``webhook_disabled`` when it is disabled)."""
    endpoint = await get_endpoint(conn, org_id, endpoint_id)
    if not endpoint.enabled:
        raise WebhookDisabledError
    now = utcnow()
    event_id = uuid.uuid4()
    seq = await repository.insert_delivery(
        conn,
        endpoint_id=endpoint_id,
        event_id=event_id,
        event_type=TEST_EVENT,
        payload=payload_of_test(event_id, org_id, endpoint_id, now),
        now=now,
    )
    return QueuedTest(seq, event_id)


async def list_deliveries(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    page: PageRequest,
    *,
    state: str | None = None,
) -> Page[Delivery]:
    """The endpoint's delivery log, newest first; another organisation's → 404."""
    await get_endpoint(conn, org_id, endpoint_id)
    return await repository.list_deliveries(conn, endpoint_id, page, state=state)
