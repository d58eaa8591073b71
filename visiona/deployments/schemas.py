"""Request and response models of the deployments API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class DeploymentStatus(StrEnum):
    """Where a deployment stands; ``succeeded`` and ``failed`` are final."""

    PENDING = "pending"
    TRANSFERRING = "transferring"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


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
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class DeploymentPage(BaseModel):
    """One page of deployments; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[DeploymentOut]
    next_cursor: str | None
