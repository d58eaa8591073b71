"""SQL for deployment records. Takes a connection; never commits.

Reads are scoped to the owner; every status change is one short ``UPDATE``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.schema import deployments

_COLUMNS = tuple(deployments.c)
_ORDER = Keyset(deployments.c.created_at, deployments.c.id, descending=True, parse_key=uuid.UUID)


async def insert_deployment(conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
    """Insert a deployment and return it."""
    row = (await conn.execute(insert(deployments).values(**values).returning(*_COLUMNS))).one()
    return dict(row._mapping)


async def set_status(
    conn: AsyncConnection,
    deployment_id: uuid.UUID,
    *,
    status: str,
    now: datetime,
    error: str | None = None,
    final: bool = False,
) -> dict[str, Any] | None:
    """Move a deployment that is not final yet to ``status``; return it, or None if it was."""
    values: dict[str, Any] = {"status": status, "updated_at": now, "error": error}
    if final:
        values["finished_at"] = now
    stmt = (
        update(deployments)
        .where(
            deployments.c.id == deployment_id,
            deployments.c.status.in_(("pending", "transferring")),
        )
        .values(**values)
        .returning(*_COLUMNS)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return dict(row._mapping) if row else None


async def get_deployment(conn: AsyncConnection, deployment_id: uuid.UUID) -> dict[str, Any] | None:
    """The deployment ``deployment_id``, or None."""
    stmt = select(*_COLUMNS).where(deployments.c.id == deployment_id)
    row = (await conn.execute(stmt)).one_or_none()
    return dict(row._mapping) if row else None


async def list_page(
    conn: AsyncConnection,
    owner_id: uuid.UUID,
    device_id: uuid.UUID,
    page: PageRequest,
) -> Page[dict[str, Any]]:
    """One page of the device's deployments, newest first (ties: the higher id first)."""
    stmt = select(*_COLUMNS).where(
        deployments.c.device_id == device_id, deployments.c.owner_user_id == owner_id
    )
    return await paginate(conn, stmt, _ORDER, page, lambda row: dict(row._mapping))
