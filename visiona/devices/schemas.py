"""Request and response bodies for devices and the agent's pair exchange and status report."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from visiona.devices.repository import Device
from visiona.devices.tags import MAX_KEY_LENGTH, MAX_TAGS, MAX_VALUE_LENGTH
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


class ModelRef(BaseModel):
    """A model a device runs (or ran): its id and the sha256 of its file."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")] = Field(
        description="The hex sha256 of the model file."
    )


class DeviceOut(BaseModel):
    """A device with both of its status fields, its tags and the model it runs."""

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
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="The device's tags, sorted by key: the ones users set and the built-in, "
        "read-only `chip` (the device type, lower case) and `type` (the device type as "
        "reported), present when the device type is known.",
        examples=[{"chip": "kl520", "site": "lab", "type": "KL520"}],
    )
    current_model: ModelRef | None = Field(
        None,
        description="The model the device runs now: its last deployment that reached the PC "
        "(`succeeded` or `stored`), or what its agent reports; null when unknown.",
    )
    previous_model: ModelRef | None = Field(
        None, description="The model it ran before `current_model` (a rollback's target)."
    )

    @classmethod
    def of(cls, device: Device, tags: dict[str, str]) -> DeviceOut:
        """The answer for ``device`` with its (visible) ``tags``."""
        out = cls.model_validate(device)
        out.tags = tags
        out.current_model = _ref(device.current_model_id, device.current_model_sha256)
        out.previous_model = _ref(device.previous_model_id, device.previous_model_sha256)
        return out


def _ref(model_id: uuid.UUID | None, sha256: str | None) -> ModelRef | None:
    if model_id is None or sha256 is None:
        return None
    return ModelRef(id=model_id, sha256=sha256)


def _ref_body(model_id: uuid.UUID | None, sha256: str | None) -> dict[str, Any] | None:
    if model_id is None or sha256 is None:
        return None
    return {"id": model_id, "sha256": sha256}


# DeviceOut's fields in its order; the ones not read off the record by name are built.
_BUILT = frozenset({"tags", "current_model", "previous_model"})
_FIELDS = tuple(DeviceOut.model_fields)


def device_body(device: Device, tags: dict[str, str]) -> dict[str, Any]:
    """:class:`DeviceOut` of ``device`` as plain values, for :class:`visiona.kit.jsonout.JSONOut`.

    The hot routes answer with it: encoded, it is byte for byte
    ``DeviceOut.of(device, tags).model_dump_json()`` (a test holds the two together),
    without building and validating the model.
    """
    body: dict[str, Any] = {}
    for name in _FIELDS:
        if name not in _BUILT:
            body[name] = getattr(device, name)
        elif name == "tags":
            body[name] = tags
        elif name == "current_model":
            body[name] = _ref_body(device.current_model_id, device.current_model_sha256)
        else:
            body[name] = _ref_body(device.previous_model_id, device.previous_model_sha256)
    return body


class DeviceList(BaseModel):
    """One page of devices in creation order."""

    items: list[DeviceOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


_TAG_MAP_ARGS: dict[str, Any] = {
    "max_length": 2 * MAX_TAGS,
    "description": f"`key: value` pairs; at most {MAX_TAGS} tags per device. Key: 1-"
    f"{MAX_KEY_LENGTH} of `a-z 0-9 . _ / -`, beginning and ending with a letter or digit; "
    f"value: 1-{MAX_VALUE_LENGTH} of `A-Z a-z 0-9 . _ -`, the same. `chip`, `type` and "
    "keys under `visiona.io/` are built in: another value than theirs is a 400 "
    "`reserved_tag`, their own value is ignored.",
    "examples": [{"site": "lab", "room": "2"}],
}


class TagsReplace(BaseModel):
    """``PUT /devices/{id}/tags``: the device's tags from now on (the ones not named go)."""

    model_config = ConfigDict(extra="forbid")

    tags: dict[StoredStr, StoredStr] = Field(**_TAG_MAP_ARGS)


class TagsPatch(BaseModel):
    """``PATCH /devices/{id}/tags``: tags to set (added or changed) and keys to remove."""

    model_config = ConfigDict(extra="forbid")

    set: dict[StoredStr, StoredStr] = Field(default_factory=dict, **_TAG_MAP_ARGS)
    remove: list[StoredStr] = Field(
        default_factory=list,
        max_length=2 * MAX_TAGS,
        description="Keys to remove; a key the device does not have is ignored.",
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
    current_model: ModelRef | None = Field(
        None,
        description="The model of the agent's last successful deployment, kept on the PC "
        "across restarts; omitted or null: unknown (the record is left as it is).",
    )
