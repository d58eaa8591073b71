"""SQL for users. Takes a connection; never commits.

Statements are built once, here, with bind parameters.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.hotread import HotRead
from visiona.kit.records import build, columns_of
from visiona.kit.schema import users

if TYPE_CHECKING:
    from visiona.kit.database import Database


@dataclass(frozen=True, slots=True)
class User:
    """A user's public fields."""

    id: uuid.UUID
    email: str
    name: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user and the password hash to check a sign-in against (never leaves the server)."""

    id: uuid.UUID
    email: str
    name: str
    created_at: datetime
    updated_at: datetime
    password_hash: str | None

    def user(self) -> User:
        """The public fields only."""
        return User(self.id, self.email, self.name, self.created_at, self.updated_at)


_PUBLIC = columns_of(User, users)
_user = build(User)
_credentials = build(Credentials)
_INSERT = insert(users).returning(*_PUBLIC)
_BY_EMAIL = select(*columns_of(Credentials, users)).where(
    func.lower(users.c.email) == bindparam("email_lower")
)
_BY_ID = select(*_PUBLIC).where(users.c.id == bindparam("user_id"))
# `/auth/me` reads it: a hot read (compiled once, run on the driver)
_BY_ID_HOT = HotRead(_BY_ID, _user)


async def insert_user(
    conn: AsyncConnection,
    *,
    user_id: uuid.UUID,
    email: str,
    name: str,
    password_hash: str | None,
    now: datetime,
) -> User:
    """Insert a user; a duplicate email (any case) raises the driver's unique error."""
    values = {
        "id": user_id,
        "email": email,
        "name": name,
        "password_hash": password_hash,
        "created_at": now,
        "updated_at": now,
    }
    return _user((await conn.execute(_INSERT, values)).one())


async def get_by_email(conn: AsyncConnection, email: str) -> Credentials | None:
    """The user with ``email`` (case-insensitive), password hash included."""
    row = (await conn.execute(_BY_EMAIL, {"email_lower": email.lower()})).one_or_none()
    return _credentials(row) if row else None


async def get_by_id(source: Database | AsyncConnection, user_id: uuid.UUID) -> User | None:
    """The public fields of the user ``user_id``: a hot read on the driver given the
    :class:`Database`, else on the connection (inside its transaction)."""
    return await _BY_ID_HOT.one(source, user_id=user_id)
