"""Request and response models of the models API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from visiona.kit.text import STORABLE
from visiona.models.chips import TargetChip as TargetChip  # noqa: PLC0414 - re-exported: callers import it from here

MAX_LABELS = 100

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), STORABLE
]
Label = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), STORABLE
]


class ModelSource(StrEnum):
    """Where a model came from."""

    UPLOADED = "uploaded"
    CONVERTED = "converted"
    BUILTIN = "builtin"


def _unique(labels: list[str]) -> list[str]:
    return list(dict.fromkeys(labels))


class UploadFields(BaseModel):
    """The text fields of ``POST /models`` (the file is streamed separately)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    target_chip: TargetChip
    labels: list[Label] = Field(default_factory=list, max_length=MAX_LABELS)

    @field_validator("target_chip", mode="before")
    @classmethod
    def _lower_chip(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("labels")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return _unique(value)


class ModelPatch(BaseModel):
    """``PATCH /models/{id}``: the fields to change (omitted ones stay)."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    labels: list[Label] | None = Field(None, max_length=MAX_LABELS)

    @field_validator("labels")
    @classmethod
    def _dedupe(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _unique(value)


class ModelOut(BaseModel):
    """A model as the API shows it (the storage key stays internal)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    target_chip: str
    labels: list[str]
    file_size: int
    sha256: str | None
    source: ModelSource
    created_at: datetime
    updated_at: datetime
    uploaded_at: datetime | None

    @field_validator("labels", mode="before")
    @classmethod
    def _none_is_empty(cls, value: object) -> object:
        return [] if value is None else value


class ModelPage(BaseModel):
    """One page of models; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[ModelOut]
    next_cursor: str | None
