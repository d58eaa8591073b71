"""Request and response bodies of organisations, members and invitations."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from visiona.kit.text import StoredStr
from visiona.orgs.permissions import Role

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class OrgCreate(BaseModel):
    """A new (team) organisation; its creator becomes its owner."""

    model_config = ConfigDict(extra="forbid")

    name: StoredStr = Field(min_length=1, max_length=200, examples=["Lab fleet"])


class OrgOut(BaseModel):
    """An organisation, with the caller's role in it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    personal: bool = Field(description="The caller's (or a member's) personal organisation.")
    role: str = Field(description="The caller's role: owner, admin, operator or viewer.")
    created_at: datetime


class OrgList(BaseModel):
    """One page of the caller's organisations."""

    items: list[OrgOut]
    next_cursor: str | None


class MemberOut(BaseModel):
    """A member of an organisation."""

    model_config = ConfigDict(from_attributes=True)

    user_id: uuid.UUID
    email: str
    name: str
    role: str
    created_at: datetime = Field(description="When they joined.")


class MemberList(BaseModel):
    """One page of members, in the order they joined."""

    items: list[MemberOut]
    next_cursor: str | None


class RoleChange(BaseModel):
    """A member's new role."""

    model_config = ConfigDict(extra="forbid")

    role: Role


class InvitationCreate(BaseModel):
    """Invite an email with a role (``owner`` is granted to members, not invited)."""

    model_config = ConfigDict(extra="forbid")

    email: StoredStr = Field(max_length=254, examples=["grace@example.com"])
    role: Role = Role.VIEWER

    @field_validator("email")
    @classmethod
    def _email_shape(cls, value: str) -> str:
        value = value.strip()
        if not _EMAIL.match(value):
            raise ValueError("not a valid email address")
        return value

    @field_validator("role")
    @classmethod
    def _not_owner(cls, value: Role) -> Role:
        if value == Role.OWNER:
            raise ValueError("invite as admin, then grant owner to the member")
        return value


class InvitationOut(BaseModel):
    """An invitation (never its token)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: str
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None
    state: str = Field(description="pending, accepted, revoked or expired.")


class InvitationCreated(InvitationOut):
    """A new invitation and its token: shown in this response only."""

    token: str = Field(
        description="`vin_…`: give it to the invitee (no mail is sent); shown once, "
        "stored as its sha256 only."
    )


class InvitationList(BaseModel):
    """One page of invitations, newest first."""

    items: list[InvitationOut]
    next_cursor: str | None


class InvitationAccept(BaseModel):
    """Accept an invitation, signed in as the invited email."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=200)
