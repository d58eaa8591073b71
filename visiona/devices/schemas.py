"""Request and response bodies for devices and the agent's pair exchange and status report."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

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

    model_config = ConfigDict(from_attributes=True)

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
    busy: bool = Field(
        description="The agent reported its local service busy (busy probe or "
        "`X-Visiona-Busy` header); false when it never said or a tunnel just came up."
    )
    tcp_ports: list[int] | None = Field(
        None,
        description="TCP ports on the device's PC its agent lets the cloud reach "
        "(`visiona agent --allow-port`; `GET /devices/{id}/tcp/{port}`), as it last "
        "reported; null when the agent never said (an older agent).",
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
    session_token_id: uuid.UUID = Field(
        description="The session token's public id (as in its listing and the audit trail)."
    )
    expires_at: datetime


class AgentStatusRequest(BaseModel):
    """The dongle's USB status as the agent sees it, and whether its local service is busy."""

    model_config = ConfigDict(extra="forbid")

    usb_status: UsbStatus
    busy: bool | None = Field(
        None, description="The local service is busy (true) or idle (false); omitted: unknown."
    )
    tcp_ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = Field(
        None,
        max_length=1024,
        description="The TCP ports the agent allows (`--allow-port`); omitted: unchanged.",
    )
