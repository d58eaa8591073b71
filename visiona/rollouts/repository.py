"""SQL for rollouts and their devices. Takes a connection; never commits.

Scope: the organisation (``org_id`` on ``rollouts``), applied in :func:`_mine` and in
the device queries of :func:`add_matching` (the rollout's organisation's devices only);
a rollout's devices are reached through their rollout only. ``owner_user_id`` is who
created the rollout.

Fencing: every write of the scheduler carries its epoch and is conditional on the
rollout's ``epoch`` being that one (:func:`_fenced`), which :func:`fence` raises when a
scheduler takes the rollout: a write of a scheduler that lost its lease (a newer one
fenced the rollout) matches no row. A device is moved to ``transferring`` only from
``queued``/``waiting`` (with the deployment that carries it, in the same transaction
as that deployment's record), and its outcome is written only while it is still
``transferring`` with that deployment: each step happens once whoever retries it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.records import build, columns_of
from visiona.kit.schema import ROLLOUT_OPEN, deployments, devices, rollout_devices, rollouts


@dataclass(frozen=True, slots=True)
class Rollout:
    """A rollout's record."""

    id: uuid.UUID
    org_id: uuid.UUID
    owner_user_id: uuid.UUID
    model_id: uuid.UUID | None
    selector: str | None
    canary: int
    batch: str
    max_failure_percent: int
    deadline: datetime | None
    state: str
    reason: str | None
    rollback_of: uuid.UUID | None
    resumed_failed: int
    epoch: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class RolloutDevice:
    """One device of a rollout."""

    rollout_id: uuid.UUID
    device_id: uuid.UUID
    model_id: uuid.UUID | None
    model_sha256: str | None
    batch: int | None
    state: str
    error: str | None
    deployment_id: uuid.UUID | None
    attempts: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Candidate:
    """A device ready to be sent its model: online, in a started batch, not yet sent."""

    device_id: uuid.UUID
    model_id: uuid.UUID | None
    model_sha256: str | None
    attempts: int
    current_sha256: str | None
    deployment_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class InFlight:
    """A device ``transferring`` and where its deployment stands."""

    device_id: uuid.UUID
    deployment_id: uuid.UUID | None
    attempts: int
    status: str | None
    error: str | None


_ROLLOUT = columns_of(Rollout, rollouts)
_DEVICE = columns_of(RolloutDevice, rollout_devices)
_rollout = build(Rollout)
_device = build(RolloutDevice)
_candidate = build(Candidate)
_in_flight = build(InFlight)
_ORDER = Keyset(rollouts.c.created_at, rollouts.c.id, parse_key=uuid.UUID, descending=True)
_DEVICE_ORDER = Keyset(
    rollout_devices.c.created_at, rollout_devices.c.device_id, parse_key=uuid.UUID
)
_online = devices.c.remote_status == "online"
_live = devices.c.deleted_at.is_(None)


def _mine(org_id: uuid.UUID) -> ColumnElement[bool]:
    """The rollouts the organisation holds."""
    return rollouts.c.org_id == org_id


def _fenced(rollout_id: uuid.UUID, epoch: int) -> ColumnElement[bool]:
    """The rollout is still driven by the scheduler of ``epoch`` and is running."""
    return exists(
        select(rollouts.c.id).where(
            rollouts.c.id == rollout_id, rollouts.c.epoch == epoch, rollouts.c.state == "running"
        )
    )


# -- records --------------------------------------------------------------------------


async def insert_rollout(conn: AsyncConnection, **values: Any) -> Rollout:
    """Store a new rollout."""
    row = (await conn.execute(insert(rollouts).values(**values).returning(*_ROLLOUT))).one()
    return _rollout(row)


async def get_rollout(
    conn: AsyncConnection, org_id: uuid.UUID, rollout_id: uuid.UUID
) -> Rollout | None:
    """The scope's rollout, or None."""
    stmt = select(*_ROLLOUT).where(rollouts.c.id == rollout_id, _mine(org_id))
    row = (await conn.execute(stmt)).one_or_none()
    return _rollout(row) if row is not None else None


async def list_rollouts(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> Page[Rollout]:
    """One page of the scope's rollouts, newest first."""
    stmt = select(*_ROLLOUT).where(_mine(org_id))
    return await paginate(conn, stmt, _ORDER, page, _rollout)


async def counts(
    conn: AsyncConnection, rollout_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[int | None, dict[str, int]]]:
    """Per rollout, per batch (None: not in a batch yet), the devices in each state."""
    if not rollout_ids:
        return {}
    stmt = (
        select(
            rollout_devices.c.rollout_id,
            rollout_devices.c.batch,
            rollout_devices.c.state,
            func.count(),
        )
        .where(rollout_devices.c.rollout_id.in_(list(rollout_ids)))
        .group_by(rollout_devices.c.rollout_id, rollout_devices.c.batch, rollout_devices.c.state)
    )
    found: dict[uuid.UUID, dict[int | None, dict[str, int]]] = {r: {} for r in rollout_ids}
    for rollout_id, batch, state, n in await conn.execute(stmt):
        found[rollout_id].setdefault(batch, {})[state] = int(n)
    return found


async def list_devices(
    conn: AsyncConnection, rollout_id: uuid.UUID, state: str | None, page: PageRequest
) -> Page[RolloutDevice]:
    """One page of the rollout's devices (in the order they joined), of ``state`` if given."""
    stmt = select(*_DEVICE).where(rollout_devices.c.rollout_id == rollout_id)
    if state is not None:
        stmt = stmt.where(rollout_devices.c.state == state)
    return await paginate(conn, stmt, _DEVICE_ORDER, page, _device)


async def add_devices(
    conn: AsyncConnection,
    rollout_id: uuid.UUID,
    device_ids: Iterable[uuid.UUID],
    *,
    model_id: uuid.UUID,
    sha256: str,
    now: datetime,
) -> int:
    """Add the listed devices (checked by the caller) as ``queued``; how many."""
    rows = [
        {
            "rollout_id": rollout_id,
            "device_id": device_id,
            "model_id": model_id,
            "model_sha256": sha256,
            "state": "queued",
            "created_at": now,
            "updated_at": now,
        }
        for device_id in dict.fromkeys(device_ids)
    ]
    if rows:
        await conn.execute(insert(rollout_devices), rows)
    return len(rows)


async def add_matching(
    conn: AsyncConnection,
    rollout: Rollout,
    where: ColumnElement[bool],
    *,
    chip: str,
    sha256: str,
    now: datetime,
) -> int:
    """Add the rollout's organisation's live devices of ``chip`` that ``where`` selects
    and the rollout does not have yet, as ``queued``; how many were added."""
    known = exists(
        select(rollout_devices.c.device_id).where(
            rollout_devices.c.rollout_id == rollout.id,
            rollout_devices.c.device_id == devices.c.id,
        )
    )
    source = select(
        literal(rollout.id, rollout_devices.c.rollout_id.type),
        devices.c.id,
        literal(rollout.model_id, rollout_devices.c.model_id.type),
        literal(sha256),
        literal("queued"),
        literal(now, rollout_devices.c.created_at.type),
        literal(now, rollout_devices.c.updated_at.type),
    ).where(
        devices.c.org_id == rollout.org_id,  # the scope: the rollout's organisation
        _live,
        func.lower(func.trim(devices.c.device_type)) == chip,
        where,
        ~known,
    )
    stmt = insert(rollout_devices).from_select(
        [
            "rollout_id",
            "device_id",
            "model_id",
            "model_sha256",
            "state",
            "created_at",
            "updated_at",
        ],
        source,
    )
    result = await conn.execute(stmt)
    return max(0, result.rowcount or 0)


async def add_rollback_devices(
    conn: AsyncConnection, rollout_id: uuid.UUID, origin_id: uuid.UUID, now: datetime
) -> int:
    """Add the devices that succeeded in ``origin_id``, each to return to its previous
    model (``queued``); one without a previous model is ``skipped`` with the reason."""
    source = (
        select(
            literal(rollout_id, rollout_devices.c.rollout_id.type),
            devices.c.id,
            devices.c.previous_model_id,
            devices.c.previous_model_sha256,
            literal("queued"),
            literal(now, rollout_devices.c.created_at.type),
            literal(now, rollout_devices.c.updated_at.type),
        )
        .select_from(rollout_devices.join(devices, devices.c.id == rollout_devices.c.device_id))
        .where(
            rollout_devices.c.rollout_id == origin_id,
            rollout_devices.c.state == "succeeded",
            _live,
        )
    )
    columns = ["rollout_id", "device_id", "model_id", "model_sha256", "state"]
    columns += ["created_at", "updated_at"]
    result = await conn.execute(insert(rollout_devices).from_select(columns, source))
    await conn.execute(
        update(rollout_devices)
        .where(rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.model_id.is_(None))
        .values(state="skipped", error="the device has no previous model", batch=0)
    )
    return max(0, result.rowcount or 0)


# -- state changes by users ---------------------------------------------------------------


async def set_rollout_state(
    conn: AsyncConnection,
    rollout_id: uuid.UUID,
    *,
    from_states: Sequence[str],
    state: str,
    reason: str | None,
    now: datetime,
    **extra: Any,
) -> Rollout | None:
    """Move the rollout from one of ``from_states`` to ``state``; None when it was not in
    one of them (nothing changes)."""
    values: dict[str, Any] = {"state": state, "reason": reason, "updated_at": now, **extra}
    if state not in ROLLOUT_OPEN:
        values["finished_at"] = now
    stmt = (
        update(rollouts)
        .where(rollouts.c.id == rollout_id, rollouts.c.state.in_(list(from_states)))
        .values(**values)
        .returning(*_ROLLOUT)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return _rollout(row) if row is not None else None


async def cancel_pending(
    conn: AsyncConnection, rollout_id: uuid.UUID, reason: str, now: datetime
) -> int:
    """Cancel the rollout's devices not yet sent (queued or waiting); how many."""
    stmt = (
        update(rollout_devices)
        .where(
            rollout_devices.c.rollout_id == rollout_id,
            rollout_devices.c.state.in_(("queued", "waiting")),
        )
        .values(state="cancelled", error=reason, updated_at=now)
    )
    return max(0, (await conn.execute(stmt)).rowcount or 0)


async def failed_count(conn: AsyncConnection, rollout_id: uuid.UUID) -> int:
    """How many of the rollout's devices failed."""
    stmt = select(func.count()).where(
        rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.state == "failed"
    )
    return int((await conn.execute(stmt)).scalar_one())


# -- the scheduler --------------------------------------------------------------------------


async def open_rollouts(conn: AsyncConnection) -> list[uuid.UUID]:
    """Every running or paused rollout, oldest first (the scheduler's scan)."""
    stmt = (
        select(rollouts.c.id)
        .where(rollouts.c.state.in_(ROLLOUT_OPEN))
        .order_by(rollouts.c.created_at, rollouts.c.id)
    )
    return list((await conn.execute(stmt)).scalars())


async def fence(conn: AsyncConnection, rollout_id: uuid.UUID, epoch: int) -> Rollout | None:
    """Take the open rollout for the scheduler of ``epoch`` (raising its ``epoch``); None
    when it is closed or a scheduler of a newer epoch took it."""
    stmt = (
        update(rollouts)
        .where(
            rollouts.c.id == rollout_id,
            rollouts.c.epoch <= epoch,
            rollouts.c.state.in_(ROLLOUT_OPEN),
        )
        .values(epoch=epoch)
        .returning(*_ROLLOUT)
    )
    row = (await conn.execute(stmt)).one_or_none()
    return _rollout(row) if row is not None else None


async def finish(
    conn: AsyncConnection,
    rollout_id: uuid.UUID,
    epoch: int,
    *,
    state: str,
    reason: str | None,
    now: datetime,
) -> bool:
    """The scheduler of ``epoch`` moves its running rollout to ``state`` (paused, completed
    or failed); False when it no longer drives it or it is not running."""
    values: dict[str, Any] = {"state": state, "reason": reason, "updated_at": now}
    if state not in ROLLOUT_OPEN:
        values["finished_at"] = now
    stmt = (
        update(rollouts)
        .where(rollouts.c.id == rollout_id, rollouts.c.epoch == epoch)
        .where(rollouts.c.state == "running")
        .values(**values)
    )
    return bool((await conn.execute(stmt)).rowcount)


async def sync_devices(
    conn: AsyncConnection, rollout_id: uuid.UUID, now: datetime
) -> list[uuid.UUID]:
    """Cancel the devices unpaired meanwhile; batched devices not yet sent that run the
    model already are ``skipped`` (``succeeded`` when a lost transfer of theirs did
    arrive), the others ``waiting`` while offline and ``queued`` once online. Returns
    the deployments of the lost transfers that did arrive."""
    mine = rollout_devices.c.rollout_id == rollout_id
    device = rollout_devices.c.device_id
    await conn.execute(
        update(rollout_devices)
        .where(
            mine,
            rollout_devices.c.state.in_(("queued", "waiting")),
            ~exists(select(devices.c.id).where(devices.c.id == device, _live)),
        )
        .values(state="cancelled", error="the device was unpaired", updated_at=now)
    )
    runs_it = exists(
        select(devices.c.id).where(
            devices.c.id == device,
            devices.c.current_model_sha256 == rollout_devices.c.model_sha256,
        )
    )
    arrived: list[uuid.UUID] = []
    for tried, values in (
        (False, {"state": "skipped", "error": "the device already runs the model"}),
        (True, {"state": "succeeded", "error": None}),  # a lost transfer that did arrive
    ):
        result = await conn.execute(
            update(rollout_devices)
            .where(
                mine,
                rollout_devices.c.batch.is_not(None),
                rollout_devices.c.state.in_(("queued", "waiting")),
                (rollout_devices.c.attempts > 0) if tried else (rollout_devices.c.attempts == 0),
                runs_it,
            )
            .values(updated_at=now, **values)
            .returning(rollout_devices.c.deployment_id)
        )
        if tried:
            arrived.extend(d for d in result.scalars() if d is not None)
    await conn.execute(
        update(rollout_devices)
        .where(
            mine,
            rollout_devices.c.batch.is_not(None),
            rollout_devices.c.state == "queued",
            ~exists(select(devices.c.id).where(devices.c.id == device, _online)),
        )
        .values(state="waiting", updated_at=now)
    )
    await conn.execute(
        update(rollout_devices)
        .where(
            mine,
            rollout_devices.c.state == "waiting",
            exists(select(devices.c.id).where(devices.c.id == device, _online, _live)),
        )
        .values(state="queued", updated_at=now)
    )
    return arrived


async def in_flight(conn: AsyncConnection, rollout_id: uuid.UUID) -> list[InFlight]:
    """The rollout's ``transferring`` devices and their deployments' status."""
    stmt = (
        select(
            rollout_devices.c.device_id,
            rollout_devices.c.deployment_id,
            rollout_devices.c.attempts,
            deployments.c.status,
            deployments.c.error,
        )
        .select_from(
            rollout_devices.outerjoin(
                deployments, deployments.c.id == rollout_devices.c.deployment_id
            )
        )
        .where(
            rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.state == "transferring"
        )
    )
    return [_in_flight(row) for row in await conn.execute(stmt)]


async def assign_batch(
    conn: AsyncConnection,
    rollout_id: uuid.UUID,
    epoch: int,
    *,
    batch: int,
    size: int,
    now: datetime,
) -> int:
    """Put ``size`` devices without a batch (the first that joined) in ``batch``; how many."""
    chosen = (
        select(rollout_devices.c.device_id)
        .where(rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.batch.is_(None))
        .order_by(rollout_devices.c.created_at, rollout_devices.c.device_id)
        .limit(size)
    )
    ids = list((await conn.execute(chosen)).scalars())
    if not ids:
        return 0
    stmt = (
        update(rollout_devices)
        .where(
            rollout_devices.c.rollout_id == rollout_id,
            rollout_devices.c.device_id.in_(ids),
            rollout_devices.c.batch.is_(None),
            _fenced(rollout_id, epoch),
        )
        .values(batch=batch, updated_at=now)
    )
    return max(0, (await conn.execute(stmt)).rowcount or 0)


async def candidates(
    conn: AsyncConnection,
    rollout_id: uuid.UUID,
    limit: int,
    *,
    settled_before: datetime,
    outlived_before: datetime,
    silent_before: datetime,
    nothing_sent: Iterable[str],
) -> list[Candidate]:
    """Up to ``limit`` devices of started batches not yet sent whose device is online.

    A device tried before (its last transfer was lost: a node died, the device was not
    reachable) is taken again only on fresh knowledge of what its agent runs, never on
    what the server knew before the loss:

    - its tunnel came up *after* that transfer's deployment was recorded (the agent
      reconnected since: a tunnel that drops makes the agent stop, and wait for, every
      deployment of that tunnel, so what it runs is settled by then), and its agent
      reported its status since that tunnel came up (``devices.updated_at``: the report
      carries ``current_model``); a device that did receive the lost transfer is then
      seen running the model (``succeeded``, by :func:`sync_devices` or the dispatch)
      instead of being sent it again;
    - or that transfer failed before anything was sent (its error one of
      ``nothing_sent``: no tunnel anywhere, the node holding it unreachable) and it
      was queued again before ``settled_before``;
    - or its tunnel is the one of that transfer (the node that lost it lost only its
      link to the tunnel's node, which may still have run it) and it was queued again
      before ``outlived_before`` (the transfer timeout ago): no part of that transfer
      can be running any more, and a model it delivered has been reported;
    - or, so that no device is forgotten, its agent reconnected after that transfer but
      no report of it since was seen, and it was queued again before ``silent_before``:
      it is sent again, and the agent's own rule (a model it runs already is not loaded
      twice) keeps that second copy from being loaded again.
    """
    lost = deployments.alias("lost")
    fresh = and_(
        devices.c.last_connected_at > lost.c.created_at,
        devices.c.updated_at >= devices.c.last_connected_at,
    )
    unsent = and_(
        lost.c.error.in_(list(nothing_sent)),
        rollout_devices.c.updated_at <= settled_before,
    )
    outlived = and_(
        devices.c.last_connected_at <= lost.c.created_at,
        rollout_devices.c.updated_at <= outlived_before,
    )
    silent = and_(
        devices.c.last_connected_at > lost.c.created_at,
        rollout_devices.c.updated_at <= silent_before,
    )
    stmt = (
        select(
            rollout_devices.c.device_id,
            rollout_devices.c.model_id,
            rollout_devices.c.model_sha256,
            rollout_devices.c.attempts,
            devices.c.current_model_sha256,
            rollout_devices.c.deployment_id,
        )
        .select_from(
            rollout_devices.join(devices, devices.c.id == rollout_devices.c.device_id).outerjoin(
                lost, lost.c.id == rollout_devices.c.deployment_id
            )
        )
        .where(
            rollout_devices.c.rollout_id == rollout_id,
            rollout_devices.c.batch.is_not(None),
            rollout_devices.c.state == "queued",
            _online,
            _live,
            or_(rollout_devices.c.attempts == 0, fresh, unsent, outlived, silent),
        )
        .order_by(
            rollout_devices.c.batch, rollout_devices.c.created_at, rollout_devices.c.device_id
        )
        .limit(limit)
    )
    return [_candidate(row) for row in await conn.execute(stmt)]


async def set_device(
    conn: AsyncConnection,
    rollout_id: uuid.UUID,
    device_id: uuid.UUID,
    driver: int,
    *,
    from_states: Sequence[str],
    now: datetime,
    **values: Any,
) -> bool:
    """The scheduler of epoch ``driver`` moves a device from one of ``from_states``; False when
    it is no longer there (or the scheduler no longer drives the rollout)."""
    stmt = (
        update(rollout_devices)
        .where(
            rollout_devices.c.rollout_id == rollout_id,
            rollout_devices.c.device_id == device_id,
            rollout_devices.c.state.in_(list(from_states)),
            _fenced(rollout_id, driver),
        )
        .values(updated_at=now, **values)
    )
    return bool((await conn.execute(stmt)).rowcount)


async def record_outcome(
    conn: AsyncConnection,
    rollout_id: uuid.UUID,
    device_id: uuid.UUID,
    deployment_id: uuid.UUID,
    *,
    now: datetime,
    **values: Any,
) -> bool:
    """Write the outcome of the device's deployment ``deployment_id`` (whoever ran it);
    False when the device is no longer transferring with that deployment."""
    stmt = (
        update(rollout_devices)
        .where(
            rollout_devices.c.rollout_id == rollout_id,
            rollout_devices.c.device_id == device_id,
            rollout_devices.c.deployment_id == deployment_id,
            rollout_devices.c.state == "transferring",
        )
        .values(updated_at=now, **values)
    )
    return bool((await conn.execute(stmt)).rowcount)
