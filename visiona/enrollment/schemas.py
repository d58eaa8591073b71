"""Request and response bodies for enrollment keys and the agent's enrolment."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from visiona.devices.tags import MAX_KEY_LENGTH, MAX_TAGS, MAX_VALUE_LENGTH
from visiona.kit.text import StoredStr

#: The longest lifetime of an enrollment key: one year.
MAX_EXPIRES_IN_HOURS = 24 * 366
MAX_USES = 1_000_000


class EnrollmentKeyCreate(BaseModel):
    """A reusable key that pairs up to ``max_uses`` PCs until it expires."""

    model_config = ConfigDict(extra="forbid")

    name: StoredStr = Field(min_length=1, max_length=200, examples=["warehouse KL720s"])
    max_uses: int = Field(ge=1, le=MAX_USES, description="How many enrolments it allows.")
    expires_in_hours: int = Field(
        ge=1, le=MAX_EXPIRES_IN_HOURS, description="Hours until the key stops working."
    )
    tags: dict[
        str,
        str,
    ] = Field(
        default_factory=dict,
        max_length=MAX_TAGS,
        description=f"Tags applied to each device it enrols (keys up to {MAX_KEY_LENGTH}, "
        f"values up to {MAX_VALUE_LENGTH} characters; the device tag rules).",
        examples=[{"site": "warehouse"}],
    )
    name_template: StoredStr | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The enrolled device's name: `{serial}`, `{type}` and `{n}` (the "
        "key's use number) are replaced; unset: the agent's name, else the serial.",
        examples=["warehouse-{type}-{serial}"],
    )


class EnrollmentKeyOut(BaseModel):
    """An enrollment key (never its plaintext)."""

    id: uuid.UUID
    name: str
    max_uses: int
    uses: int
    tags: dict[str, str]
    name_template: str | None
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class EnrollmentKeyCreated(EnrollmentKeyOut):
    """A new key, with its plaintext: shown in this answer only."""

    key: str = Field(description="`vek_…`: `visiona agent --enroll-key`. Shown once.")


class EnrollmentKeyList(BaseModel):
    """One page of enrollment keys, oldest first."""

    items: list[EnrollmentKeyOut]
    next_cursor: str | None


class EnrollRequest(BaseModel):
    """The agent's enrolment: a reusable key and what the agent knows of its dongle."""

    model_config = ConfigDict(extra="forbid")

    enrollment_key: StoredStr = Field(max_length=1024, description="The `vek_…` plaintext.")
    serial_number: StoredStr = Field(min_length=1, max_length=128, examples=["KL520-0001"])
    device_type: StoredStr = Field(min_length=1, max_length=64, examples=["kl520"])
    name: StoredStr | None = Field(None, min_length=1, max_length=200)
