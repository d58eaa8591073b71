"""Request and response bodies for users and web sessions."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from visiona.kit.text import StoredStr

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class RegisterRequest(BaseModel):
    """Create an account."""

    model_config = ConfigDict(extra="forbid")

    email: StoredStr = Field(max_length=254, examples=["ada@example.com"])
    password: str = Field(min_length=8, max_length=1024)
    name: StoredStr = Field("", max_length=200)

    @field_validator("email")
    @classmethod
    def _email_shape(cls, value: str) -> str:
        value = value.strip()
        if not _EMAIL.match(value):
            raise ValueError("not a valid email address")
        return value


class LoginRequest(BaseModel):
    """Sign in with email and password."""

    model_config = ConfigDict(extra="forbid")

    email: StoredStr = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class UserOut(BaseModel):
    """A user, as shown to that user."""

    id: uuid.UUID
    email: str
    name: str
    created_at: datetime
    updated_at: datetime


class LoginResponse(BaseModel):
    """The signed-in user and a bearer token (also set as an HttpOnly cookie)."""

    user: UserOut
    token: str = Field(description="Web session token; send as `Authorization: Bearer`.")
    expires_at: datetime = Field(description="Absolute end of the session.")
