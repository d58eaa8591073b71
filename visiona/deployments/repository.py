"""SQL for deployment records. Takes a connection; never commits.

Reads are scoped to the organisation (``org_id``); every status change is one short ``UPDATE``.
Statements without per-call structure are built once, here, with bind parameters.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from sqlalchemy import Insert, bindparam, func, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.deployments.schemas import DeploymentStatus
from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.records import AnyRow, columns_of
from visiona.kit.schema import DEPLOYMENT_ACTIVE, UTCDateTime, deployments


@dataclass(frozen=True, slots=True)
class Deployment:
    """One model pushed to one device."""

    id: uuid.UUID
    owner_user_id: uuid.UUID
    org_id: uuid.UUID
    device_id: uuid.UUID
    model_id: uuid.UUID
    status: DeploymentStatus
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


_COLUMNS = columns_of(Deployment, deployments)
_ORDER = Keyset(deployments.c.created_at, deployments.c.id, descending=True, parse_key=uuid.UUID)
_FINAL = (
    DeploymentStatus.SUCCEEDED.value,
    DeploymentStatus.STORED.value,
    DeploymentStatus.FAILED.value,
)
_now = bindparam("now", type_=UTCDateTime())
_GET = select(*_COLUMNS).where(deployments.c.id == bindparam("deployment_id"))
# Only a record still pending or transferring moves; a final state is final.
# ``finished_at`` is set (bound to now) when the new status is final.
_SET_STATUS = (
    update(deployments)
    .where(
        deployments.c.id == bindparam("deployment_id"),
        deployments.c.status.in_(
            (DeploymentStatus.PENDING.value, DeploymentStatus.TRANSFERRING.value)
        ),
    )
    .values(
        status=bindparam("new_status"),
        updated_at=_now,
        error=bindparam("reason"),
        finished_at=func.coalesce(
            bindparam("finished", type_=UTCDateTime()), deployments.c.finished_at
        ),
    )
    .returning(*_COLUMNS)
)

# A transfer failed as lost (its node died) whose model the agent then reported
# running did deliver: the one way a final record changes (failed → succeeded).
_CONFIRM = (
    update(deployments)
    .where(
        deployments.c.id == bindparam("deployment_id"),
        deployments.c.status == DeploymentStatus.FAILED.value,
        deployments.c.error.in_(bindparam("lost", expanding=True)),
    )
    .values(status=DeploymentStatus.SUCCEEDED.value, updated_at=_now, error=bindparam("notice"))
    .returning(*_COLUMNS)
)


_active = deployments.c.status.in_(DEPLOYMENT_ACTIVE)
# The partial index's predicate for ON CONFLICT, with the statuses as SQL literals:
# PostgreSQL infers the arbiter index from the predicate, and with bound parameters it
# can only while it plans with their values — once it switches a prepared statement to
# a generic plan (after five executions on a connection) the insert fails with "no
# unique or exclusion constraint matching the ON CONFLICT specification".
_ACTIVE_INDEX = deployments.c.status.in_(
    [literal_column(f"'{status}'") for status in DEPLOYMENT_ACTIVE]
)
_GET_ACTIVE = select(*_COLUMNS).where(deployments.c.device_id == bindparam("device_id"), _active)
# A record still active after the transfer timeout was left by a server that stopped.
_FAIL_STALE = (
    update(deployments)
    .where(
        deployments.c.device_id == bindparam("of_device"),
        _active,
        deployments.c.created_at < bindparam("cutoff", type_=UTCDateTime()),
    )
    .values(
        status=DeploymentStatus.FAILED.value,
        updated_at=_now,
        finished_at=_now,
        error=bindparam("reason"),
    )
    .returning(deployments.c.id, deployments.c.model_id)
)


@cache
def _insert_unless_active(dialect: str) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING`` on the one-active-per-device index.

    A racing insert for the same device waits for the other transaction and then
    does nothing (PostgreSQL), or finds its row (SQLite: one writer at a time).
    """
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        make(deployments)
        .on_conflict_do_nothing(index_elements=[deployments.c.device_id], index_where=_ACTIVE_INDEX)
        .returning(*_COLUMNS)
    )


def _deployment(row: AnyRow) -> Deployment:
    id_, owner, org, device, model, status, error, created, updated, finished = row
    return Deployment(
        id_, owner, org, device, model, DeploymentStatus(status), error, created, updated, finished
    )


async def insert_deployment(
    conn: AsyncConnection,
    *,
    deployment_id: uuid.UUID,
    owner_user_id: uuid.UUID,
    org_id: uuid.UUID,
    device_id: uuid.UUID,
    model_id: uuid.UUID,
    now: datetime,
) -> Deployment | None:
    """Record a ``pending`` deployment and return it; None when the device already has
    one ``pending`` or ``transferring`` (nothing is recorded then)."""
    values = {
        "id": deployment_id,
        "owner_user_id": owner_user_id,
        "org_id": org_id,
        "device_id": device_id,
        "model_id": model_id,
        "status": DeploymentStatus.PENDING.value,
        "created_at": now,
        "updated_at": now,
    }
    row = (await conn.execute(_insert_unless_active(conn.dialect.name), values)).one_or_none()
    return _deployment(row) if row else None


async def get_active(conn: AsyncConnection, device_id: uuid.UUID) -> Deployment | None:
    """The device's deployment still ``pending`` or ``transferring``, if any."""
    row = (await conn.execute(_GET_ACTIVE, {"device_id": device_id})).one_or_none()
    return _deployment(row) if row else None


async def fail_stale(
    conn: AsyncConnection, device_id: uuid.UUID, *, cutoff: datetime, now: datetime, reason: str
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Fail the device's active deployments created before ``cutoff``; their
    ``(id, model_id)``."""
    params = {"of_device": device_id, "cutoff": cutoff, "now": now, "reason": reason}
    return [(row[0], row[1]) for row in await conn.execute(_FAIL_STALE, params)]


async def set_status(
    conn: AsyncConnection,
    deployment_id: uuid.UUID,
    *,
    status: DeploymentStatus,
    now: datetime,
    error: str | None = None,
) -> Deployment | None:
    """Move a deployment that is not final yet to ``status``; return it, or None if it was."""
    params = {
        "deployment_id": deployment_id,
        "new_status": status.value,
        "now": now,
        "reason": error,
        "finished": now if status.value in _FINAL else None,
    }
    row = (await conn.execute(_SET_STATUS, params)).one_or_none()
    return _deployment(row) if row else None


async def confirm_delivered(
    conn: AsyncConnection,
    deployment_id: uuid.UUID,
    *,
    lost: Collection[str],
    notice: str,
    now: datetime,
) -> Deployment | None:
    """Move a deployment ``failed`` with one of the ``lost`` reasons to ``succeeded`` (with
    ``notice`` as its detail); None when it is not such a record (nothing changes)."""
    params = {"deployment_id": deployment_id, "lost": list(lost), "notice": notice, "now": now}
    row = (await conn.execute(_CONFIRM, params)).one_or_none()
    return _deployment(row) if row else None


async def get_deployment(conn: AsyncConnection, deployment_id: uuid.UUID) -> Deployment | None:
    """The deployment ``deployment_id``, or None."""
    row = (await conn.execute(_GET, {"deployment_id": deployment_id})).one_or_none()
    return _deployment(row) if row else None


async def list_page(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    device_id: uuid.UUID,
    page: PageRequest,
) -> Page[Deployment]:
    """One page of the device's deployments in ``org_id``, newest first (ties: the higher
    id first)."""
    stmt = select(*_COLUMNS).where(
        deployments.c.device_id == device_id, deployments.c.org_id == org_id
    )
    return await paginate(conn, stmt, _ORDER, page, _deployment)


_UNFINISHED = (
    select(deployments.c.id)
    .where(
        deployments.c.status.in_(
            (DeploymentStatus.PENDING.value, DeploymentStatus.TRANSFERRING.value)
        ),
        deployments.c.updated_at < bindparam("before", type_=UTCDateTime()),
    )
    .order_by(deployments.c.updated_at)
    .limit(bindparam("limit"))
)


async def unfinished_before(
    conn: AsyncConnection, before: datetime, limit: int = 500
) -> list[uuid.UUID]:
    """Deployments still ``pending`` or ``transferring`` whose last change is older than
    ``before`` (oldest first, at most ``limit``): candidates left by a stopped node."""
    rows = await conn.execute(_UNFINISHED, {"before": before, "limit": limit})
    return [row[0] for row in rows]
