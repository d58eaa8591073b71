"""Request and response bodies for devices, pairing tokens, session tokens and the agent."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from visiona.kit.text import StoredStr
from visiona.wire import RemoteStatus, UsbStatus

_NAME = Field(min_length=1, max_length=200, examples=["Lab KL520"])
_SERIAL = Field(min_length=1, max_length=128, examples=["KL520-0001"])
_DEVICE_TYPE = Field(min_length=1, max_length=64, examples=["kl520"])


class DeviceCreate(BaseModel):
    """Register a device by hand (the agent's pair exchange does this too)."""

    model_config = ConfigDict(extra="forbid")

    name: StoredStr = _NAME
    serial_number: StoredStr = _SERIAL
    device_type: StoredStr | None = Field(None, min_length=1, max_length=64, examples=["kl520"])


class DeviceUpdate(BaseModel):
    """Rename a device."""

    model_config = ConfigDict(extra="forbid")

    name: StoredStr = _NAME


class DeviceOut(BaseModel):
    """A device with both of its status fields."""

    id: uuid.UUID
    name: str
    device_type: str | None
    serial_number: str | None
    remote_status: RemoteStatus = Field(
        description="Tunnel level, seen by the cloud: online | offline | reconnecting | error."
    )
    status: UsbStatus = Field(
        description="USB level, reported by the agent: online | offline | unknown."
    )
    last_seen_at: datetime | None
    last_connected_at: datetime | None
    paired_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeviceList(BaseModel):
    """One page of devices in creation order."""

    items: list[DeviceOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


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

    id: str = Field(description="The token's public id (the hex sha256 of the plaintext).")
    token: str = Field(description="The plaintext `vpt_…` token, for the agent's `--token`.")
    expires_at: datetime


class PairingTokenOut(BaseModel):
    """A pairing token as listed (never the plaintext)."""

    id: str
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

    id: str = Field(description="The token's public id (the hex sha256 of the plaintext).")
    device_id: uuid.UUID
    pairing_token_id: str | None = Field(description="The pairing token it was exchanged for.")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class SessionTokenList(BaseModel):
    """One page of a device's session tokens in creation order."""

    items: list[SessionTokenOut]
    next_cursor: str | None


class PairRequest(BaseModel):
    """The agent's pair exchange: a pairing token and what the agent knows of its dongle."""

    model_config = ConfigDict(extra="forbid")

    pairing_token: StoredStr = Field(max_length=1024, description="The `vpt_…` plaintext.")
    serial_number: StoredStr = _SERIAL
    device_type: StoredStr = _DEVICE_TYPE
    name: StoredStr = _NAME


class PairResponse(BaseModel):
    """The paired device and its session token (plaintext, shown once)."""

    device_id: uuid.UUID
    session_token: str = Field(description="`vst_…`; send as `Authorization: Bearer`.")
    expires_at: datetime


class AgentStatusRequest(BaseModel):
    """The dongle's USB status as the agent sees it."""

    model_config = ConfigDict(extra="forbid")

    usb_status: UsbStatus
