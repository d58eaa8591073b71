"""Request and response bodies of API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: The scopes a key may carry (DESIGN §4b).
Scope = Literal["read", "devices:write", "models:write", "deploy", "proxy", "admin"]


class ApiKeyCreate(BaseModel):
    """Ask for an API key."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="What the key is for.")
    scopes: list[Scope] = Field(
        min_length=1,
        max_length=6,
        description="`read`, `devices:write`, `models:write`, `deploy`, `proxy`, `admin`; "
        "none beyond your own role's permissions (else 403 `scope_not_allowed`).",
    )
    expires_in_days: int = Field(
        90, ge=1, le=365, description="Lifetime in days, 1 to 365 (default 90)."
    )


class ApiKeyOut(BaseModel):
    """An API key as listed (never the key nor its hash)."""

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The key's first characters (`vak_` and 8 more).")
    scopes: list[str]
    created_by: uuid.UUID = Field(description="The user who created it.")
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None = Field(
        description="When it was last used (written every few seconds, not per request)."
    )
    revoked_at: datetime | None
    state: str = Field(description="`active`, `expired` or `revoked`.")


class ApiKeyCreated(ApiKeyOut):
    """A new key: ``key`` is shown here once and never again."""

    key: str = Field(description="The plaintext `vak_…` key, for `Authorization: Bearer`.")


class ApiKeyList(BaseModel):
    """One page of the organisation's API keys, newest first."""

    items: list[ApiKeyOut]
    next_cursor: str | None
