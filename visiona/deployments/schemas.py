"""Request and response models of the deployments API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DeploymentStatus(StrEnum):
    """Where a deployment stands; ``succeeded``, ``stored`` and ``failed`` are final.

    ``succeeded``: the file is on the PC and the agent's deploy hook ran and exited 0.
    ``stored``: the file is on the PC, but the agent has no deploy hook configured, so
    nothing loaded it (the record's ``detail`` says where it is).
    """

    PENDING = "pending"
    TRANSFERRING = "transferring"
    SUCCEEDED = "succeeded"
    STORED = "stored"
    FAILED = "failed"

    @property
    def delivered(self) -> bool:
        """Whether the model reached the PC (``succeeded`` or ``stored``)."""
        return self in (DeploymentStatus.SUCCEEDED, DeploymentStatus.STORED)


class DeploymentCreate(BaseModel):
    """``POST /devices/{id}/deployments``: the model to send to the device."""

    model_config = ConfigDict(extra="forbid")

    model_id: uuid.UUID


class DeploymentOut(BaseModel):
    """A deployment as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    device_id: uuid.UUID
    model_id: uuid.UUID
    status: DeploymentStatus
    error: str | None = Field(description="Why it failed (``failed`` only).")
    detail: str | None = Field(
        None,
        description="What happened, in words: the failure's reason, or for ``stored`` where "
        "the file is on the PC and that no deploy hook is configured.",
    )
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @model_validator(mode="after")
    def _explain(self) -> DeploymentOut:
        # The record's one text column holds the failure's reason or the stored notice.
        if self.detail is None:
            self.detail = self.error
        if self.status is not DeploymentStatus.FAILED:
            self.error = None
        return self


class DeploymentPage(BaseModel):
    """One page of deployments; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[DeploymentOut]
    next_cursor: str | None
