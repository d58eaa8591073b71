"""SQL for users. Takes a connection; never commits."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.schema import users

_PUBLIC = (users.c.id, users.c.email, users.c.name, users.c.created_at, users.c.updated_at)


async def insert_user(
    conn: AsyncConnection,
    *,
    user_id: uuid.UUID,
    email: str,
    name: str,
    password_hash: str | None,
    now: datetime,
) -> dict[str, Any]:
    """Insert a user; a duplicate email (any case) raises the driver's unique error."""
    row = (
        await conn.execute(
            insert(users)
            .values(
                id=user_id,
                email=email,
                name=name,
                password_hash=password_hash,
                created_at=now,
                updated_at=now,
            )
            .returning(*_PUBLIC)
        )
    ).one()
    return dict(row._mapping)


async def get_by_email(conn: AsyncConnection, email: str) -> dict[str, Any] | None:
    """The user with ``email`` (case-insensitive), password hash included."""
    row = (
        await conn.execute(
            select(*_PUBLIC, users.c.password_hash).where(
                func.lower(users.c.email) == email.lower()
            )
        )
    ).one_or_none()
    return dict(row._mapping) if row else None


async def get_by_id(conn: AsyncConnection, user_id: uuid.UUID) -> dict[str, Any] | None:
    """The public fields of the user ``user_id``."""
    row = (await conn.execute(select(*_PUBLIC).where(users.c.id == user_id))).one_or_none()
    return dict(row._mapping) if row else None
