"""Request and response bodies of webhook endpoints and their delivery log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from visiona.kit.text import StoredStr

#: The states of a delivery.
DeliveryState = Literal["pending", "delivered", "failed"]
_EVENTS = (
    "Event types: an audit action (`device.renamed`), a family (`device.*`) or `*` "
    "(everything); see the event catalogue in docs/api-spec.md."
)


class WebhookCreate(BaseModel):
    """A new endpoint: where to post and which events."""

    model_config = ConfigDict(extra="forbid")

    url: StoredStr = Field(
        description="`http` or `https` URL with a host, no user:password, at most 2048 "
        "characters (else 422 `invalid_webhook_url`).",
        examples=["https://hooks.example.com/visiona"],
    )
    events: list[StoredStr] = Field(
        min_length=1,
        max_length=100,
        description=_EVENTS + " An unknown one → 422 `unknown_event_type`.",
        examples=[["device.*", "rollout.failed"]],
    )
    description: StoredStr | None = Field(None, max_length=500, examples=["ops chat"])


class WebhookUpdate(BaseModel):
    """Change an endpoint: every field is optional; `description: null` clears it."""

    model_config = ConfigDict(extra="forbid")

    url: StoredStr | None = Field(None, description="A new URL (the same rules as creation).")
    events: list[StoredStr] | None = Field(None, min_length=1, max_length=100, description=_EVENTS)
    description: StoredStr | None = Field(None, max_length=500)
    enabled: bool | None = Field(
        None,
        description="`false` stops deliveries (pending ones stay queued); `true` enables "
        "it again, clears `disabled_reason` and sends what is queued.",
    )


class WebhookOut(BaseModel):
    """An endpoint (never its secret)."""

    id: uuid.UUID
    url: str
    description: str | None
    events: list[str] = Field(description="Its event types, sorted.")
    enabled: bool
    disabled_reason: str | None = Field(
        description="Why it is disabled: `disabled by a user`, or the server's reason "
        "when it kept failing."
    )
    disabled_at: datetime | None
    failing_since: datetime | None = Field(
        description="The first failed attempt of the current run of failures (null: the "
        "last attempt succeeded)."
    )
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    """A new endpoint with its signing secret: shown in this answer only."""

    secret: str = Field(
        description="`whsec_…` (Standard Webhooks): verify each delivery's "
        "`webhook-signature` with it. Shown once."
    )


class WebhookList(BaseModel):
    """One page of the organisation's endpoints, newest first."""

    items: list[WebhookOut]
    next_cursor: str | None


class QueuedTestEvent(BaseModel):
    """The queued test event."""

    delivery_id: str = Field(description="Its row in the delivery log.")
    event_id: uuid.UUID = Field(description="The `webhook-id` it is sent with.")


class DeliveryOut(BaseModel):
    """One delivery of an event to the endpoint."""

    id: str = Field(description="Its sequence number: deliveries of an endpoint go in order.")
    event_id: uuid.UUID = Field(description="The `webhook-id` header: de-duplicate on it.")
    event_type: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime = Field(description="When it is (or was) due.")
    last_attempt_at: datetime | None
    last_status: int | None = Field(description="The receiver's last HTTP status.")
    last_latency_ms: int | None
    last_response: str | None = Field(description="The first 1 KiB of the last answer.")
    last_error: str | None = Field(description="Why the last attempt got no answer.")
    delivered_at: datetime | None
    created_at: datetime
    payload: dict[str, Any] = Field(description="The JSON body, as sent.")


class DeliveryList(BaseModel):
    """One page of an endpoint's deliveries, newest first."""

    items: list[DeliveryOut]
    next_cursor: str | None
