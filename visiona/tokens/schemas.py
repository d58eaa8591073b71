"""Request and response bodies for pairing tokens and device session tokens."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class PairingTokenCreate(BaseModel):
    """Ask for a pairing token."""

    model_config = ConfigDict(extra="forbid")

    ttl_seconds: int | None = Field(
        None,
        ge=1,
        description="Lifetime in seconds; default VISIONA_PAIRING_TOKEN_TTL, "
        "at most VISIONA_PAIRING_TOKEN_MAX_TTL.",
    )


class PairingTokenCreated(BaseModel):
    """A new pairing token: the plaintext is shown here once and never again."""

    id: str = Field(description="The token's public id (a random UUID, unrelated to the token).")
    token: str = Field(description="The plaintext `vpt_…` token, for the agent's `--token`.")
    expires_at: datetime


class PairingTokenOut(BaseModel):
    """A pairing token as listed (never the plaintext)."""

    id: str = Field(description="The token's public id (a random UUID, unrelated to the token).")
    created_at: datetime
    expires_at: datetime | None
    used_at: datetime | None
    revoked_at: datetime | None
    device_id: uuid.UUID | None = Field(description="The device it paired, once used.")


class PairingTokenList(BaseModel):
    """One page of the caller's pairing tokens in creation order."""

    items: list[PairingTokenOut]
    next_cursor: str | None


class SessionTokenOut(BaseModel):
    """An agent session token as listed (never the plaintext)."""

    id: str = Field(description="The token's public id (a random UUID, unrelated to the token).")
    device_id: uuid.UUID
    pairing_token_id: str | None = Field(
        description="The public id of the pairing token the device paired with "
        "(kept across renewals)."
    )
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class SessionTokenList(BaseModel):
    """One page of a device's session tokens in creation order."""

    items: list[SessionTokenOut]
    next_cursor: str | None
