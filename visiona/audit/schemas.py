"""Response bodies of the audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AuditEventOut(BaseModel):
    """One event: who (actor) did what (action) to what (target), when and from where."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    occurred_at: datetime
    actor_type: str = Field(description="`user`, `api_key`, `device` or `system`.")
    actor_id: uuid.UUID | None = Field(
        description="The user, API key or device; null for `system`."
    )
    actor_email: str | None = Field(
        default=None, description="The acting user's email (a user actor who still exists)."
    )
    actor_name: str | None = Field(
        default=None, description="The acting user's name (an API key: the key's name)."
    )
    action: str = Field(examples=["device.paired"])
    target_type: str = Field(examples=["device"])
    target_id: str | None
    device_id: uuid.UUID | None = Field(description="The device the event concerns, if any.")
    client_addr: str | None = Field(description="The caller's address, when a client acted.")
    request_id: str | None = Field(description="The request's `X-Request-ID`.")
    detail: dict[str, Any] = Field(
        description="Small, action-specific fields (the catalogue in docs/api-spec.md); "
        "never a token, password or hash."
    )


class AuditEventList(BaseModel):
    """One page of events, newest first."""

    items: list[AuditEventOut]
    next_cursor: str | None
