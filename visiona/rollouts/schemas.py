"""Request and response bodies for rollouts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from visiona.rollouts.planner import parse_batch
from visiona.rollouts.service import MAX_DEVICE_IDS

RolloutState = Literal["running", "paused", "completed", "cancelled", "failed"]
DeviceState = Literal[
    "queued", "waiting", "transferring", "succeeded", "failed", "skipped", "cancelled"
]


class RolloutCreate(BaseModel):
    """A model to many devices: a selector (dynamic) or a list of devices, in batches."""

    model_config = ConfigDict(extra="forbid")

    model_id: uuid.UUID
    selector: str | None = Field(
        None,
        max_length=2048,
        description="A tag selector (`site=lab,chip in (kl720)`): the devices of the "
        "model's chip it selects, now and while the rollout is open.",
        examples=["site=lab"],
    )
    device_ids: list[uuid.UUID] | None = Field(
        None, max_length=MAX_DEVICE_IDS, description="Or an explicit list of devices."
    )
    canary: int = Field(0, ge=0, le=10_000, description="Devices of the canary batch (0: none).")
    batch: int | str = Field(
        "100%",
        description="Devices per batch after the canary: a count (`10`) or a share of the "
        'rollout\'s devices (`"25%"`).',
        examples=["25%", 10],
    )
    max_failure_percent: int = Field(
        0,
        ge=0,
        le=100,
        description="Failures allowed, in percent of the devices tried (per batch and "
        "overall); more pauses the rollout with the reason (auto-abort).",
    )
    deadline: datetime | None = Field(
        None,
        description="Devices not deployed by then (offline ones) are cancelled and the "
        "rollout ends `failed`; a selector rollout with a deadline stays open until then.",
    )

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: int | str) -> str:
        return str(parse_batch(value))


class Batch(BaseModel):
    """One batch (0: the canary) and its devices per state."""

    batch: int
    devices: int
    counts: dict[str, int]


class RolloutOut(BaseModel):
    """A rollout, its devices per state and its batches."""

    id: uuid.UUID
    model_id: uuid.UUID | None = Field(description="Null for a rollback.")
    selector: str | None
    canary: int
    batch: str
    max_failure_percent: int
    deadline: datetime | None
    state: RolloutState
    reason: str | None = Field(description="Why it is paused, cancelled or failed.")
    rollback_of: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    devices: int = Field(description="Devices in the rollout.")
    counts: dict[str, int] = Field(description="Devices per state (every state listed).")
    batches: list[Batch]
    unbatched: int = Field(description="Devices not in a batch yet.")


class RolloutList(BaseModel):
    """One page of rollouts, newest first."""

    items: list[RolloutOut]
    next_cursor: str | None


class RolloutDeviceOut(BaseModel):
    """A device in a rollout."""

    device_id: uuid.UUID
    state: DeviceState
    batch: int | None
    error: str | None = Field(description="The agent's message when failed; why skipped.")
    model_id: uuid.UUID | None
    deployment_id: uuid.UUID | None
    attempts: int
    updated_at: datetime


class RolloutDeviceList(BaseModel):
    """One page of a rollout's devices."""

    items: list[RolloutDeviceOut]
    next_cursor: str | None
