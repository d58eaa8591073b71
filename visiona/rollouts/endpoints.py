"""HTTP routes for rollouts (HTTP in/out only); the per-request unit of work.

Changes wake this node's scheduler, which acts at its next turn if it holds the lease
(the leader's turn comes within ``VISIONA_ROLLOUT_INTERVAL`` otherwise).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from visiona.auth.dependencies import CurrentPrincipal, Deployer
from visiona.deployments.service import ChipMismatchError, ModelFileMissingError
from visiona.devices.selectors import InvalidSelectorError
from visiona.kit.deps import Conn
from visiona.kit.errors import CsrfError, NotFoundError, UnauthorizedError, ValidationFailedError
from visiona.kit.http import error_responses
from visiona.kit.pagination import PageParams
from visiona.rollouts import service
from visiona.rollouts.dependencies import SchedulerDep
from visiona.rollouts.planner import STATES
from visiona.rollouts.repository import RolloutDevice
from visiona.rollouts.schemas import (
    Batch,
    DeviceState,
    RolloutCreate,
    RolloutDeviceList,
    RolloutDeviceOut,
    RolloutList,
    RolloutOut,
)
from visiona.rollouts.service import RolloutStateError, RolloutView

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


def rollout_out(found: RolloutView) -> RolloutOut:
    """The API shape of a rollout with its counts."""
    r = found.rollout
    counts = found.counts
    batches = [
        Batch(
            batch=number,
            devices=sum(states.values()),
            counts={s: states.get(s, 0) for s in STATES},
        )
        for number, states in sorted((b, s) for b, s in found.by_batch.items() if b is not None)
    ]
    return RolloutOut(
        id=r.id,
        model_id=r.model_id,
        selector=r.selector,
        canary=r.canary,
        batch=r.batch,
        max_failure_percent=r.max_failure_percent,
        deadline=r.deadline,
        state=r.state,
        reason=r.reason,
        rollback_of=r.rollback_of,
        created_at=r.created_at,
        updated_at=r.updated_at,
        finished_at=r.finished_at,
        devices=counts.total,
        counts={s: counts[s] for s in STATES},
        batches=batches,
        unbatched=sum(found.by_batch.get(None, {}).values()),
    )


def _device_out(item: RolloutDevice) -> RolloutDeviceOut:
    return RolloutDeviceOut(
        device_id=item.device_id,
        state=item.state,
        batch=item.batch,
        error=item.error,
        model_id=item.model_id,
        deployment_id=item.deployment_id,
        attempts=item.attempts,
        updated_at=item.updated_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RolloutOut,
    summary="Roll a model out to many devices",
    responses=error_responses(
        UnauthorizedError,
        CsrfError,
        InvalidSelectorError,
        NotFoundError,
        ChipMismatchError,
        ModelFileMissingError,
        ValidationFailedError,
    ),
)
async def create_rollout(
    body: RolloutCreate, principal: Deployer, conn: Conn, scheduler: SchedulerDep
) -> RolloutOut:
    """Create a running rollout of `model_id` to the devices `selector` selects (of the
    model's chip; devices that match later join while it is open) or to `device_ids`.
    The canary batch goes first, then batches of `batch` devices; a batch starts when
    the previous one has no device queued or transferring and at most
    `max_failure_percent` of its devices failed; more failures pause it (auto-abort).
    Offline devices wait and get the model when they come online, until `deadline`.
    Give exactly one of `selector` and `device_ids` (422)."""
    from visiona.rollouts.planner import parse_batch  # noqa: PLC0415 - validated already

    found = await service.create_rollout(
        conn,
        principal.org_id,
        principal.user_id,
        actor=principal.audit_actor,
        model_id=body.model_id,
        selector=body.selector,
        device_ids=body.device_ids,
        canary=body.canary,
        batch=parse_batch(body.batch),
        max_failure_percent=body.max_failure_percent,
        deadline=body.deadline,
    )
    scheduler.wake()
    return rollout_out(found)


@router.get(
    "",
    response_model=RolloutList,
    summary="The organisation's rollouts",
    responses=error_responses(UnauthorizedError, ValidationFailedError),
)
async def list_rollouts(principal: CurrentPrincipal, conn: Conn, page: PageParams) -> RolloutList:
    """The organisation's rollouts, newest first, with their devices per state and batches."""
    found = await service.list_rollouts(conn, principal.org_id, page)
    return RolloutList(items=[rollout_out(r) for r in found.items], next_cursor=found.next_cursor)


@router.get(
    "/{rollout_id}",
    response_model=RolloutOut,
    summary="A rollout",
    responses=error_responses(UnauthorizedError, NotFoundError, ValidationFailedError),
)
async def get_rollout(rollout_id: uuid.UUID, principal: CurrentPrincipal, conn: Conn) -> RolloutOut:
    """The rollout's state (and reason), its devices per state and its batches."""
    return rollout_out(await service.get_rollout(conn, principal.org_id, rollout_id))


@router.get(
    "/{rollout_id}/devices",
    response_model=RolloutDeviceList,
    summary="A rollout's devices",
    responses=error_responses(UnauthorizedError, NotFoundError, ValidationFailedError),
)
async def list_rollout_devices(
    rollout_id: uuid.UUID,
    principal: CurrentPrincipal,
    conn: Conn,
    page: PageParams,
    state: Annotated[DeviceState | None, Query(description="Only devices in this state.")] = None,
) -> RolloutDeviceList:
    """The rollout's devices in the order they joined, with their state, batch and the
    agent's message when one failed."""
    found = await service.list_devices(conn, principal.org_id, rollout_id, state, page)
    return RolloutDeviceList(
        items=[_device_out(i) for i in found.items], next_cursor=found.next_cursor
    )


_ACTION_ERRORS = error_responses(UnauthorizedError, CsrfError, NotFoundError, RolloutStateError)


@router.post(
    "/{rollout_id}/pause",
    response_model=RolloutOut,
    summary="Pause a rollout",
    responses=_ACTION_ERRORS,
)
async def pause_rollout(rollout_id: uuid.UUID, principal: Deployer, conn: Conn) -> RolloutOut:
    """No new transfer starts (running ones finish). A paused rollout is answered as it
    is; a finished one → 409 `rollout_state`."""
    return rollout_out(
        await service.pause(conn, principal.org_id, rollout_id, actor=principal.audit_actor)
    )


@router.post(
    "/{rollout_id}/resume",
    response_model=RolloutOut,
    summary="Resume a paused rollout",
    responses=_ACTION_ERRORS,
)
async def resume_rollout(
    rollout_id: uuid.UUID, principal: Deployer, conn: Conn, scheduler: SchedulerDep
) -> RolloutOut:
    """Resume it (also after an auto-abort: only a new failure over the threshold pauses
    it again). A running rollout is answered as it is; a finished one → 409."""
    found = await service.resume(conn, principal.org_id, rollout_id, actor=principal.audit_actor)
    scheduler.wake()
    return rollout_out(found)


@router.post(
    "/{rollout_id}/cancel",
    response_model=RolloutOut,
    summary="Cancel a rollout",
    responses=_ACTION_ERRORS,
)
async def cancel_rollout(rollout_id: uuid.UUID, principal: Deployer, conn: Conn) -> RolloutOut:
    """Cancel it: queued and waiting devices are `cancelled`; transfers already running
    finish and are recorded. A finished rollout → 409 `rollout_state`."""
    return rollout_out(
        await service.cancel(conn, principal.org_id, rollout_id, actor=principal.audit_actor)
    )


@router.post(
    "/{rollout_id}/rollback",
    status_code=status.HTTP_201_CREATED,
    response_model=RolloutOut,
    summary="Roll a finished rollout back",
    responses=_ACTION_ERRORS,
)
async def rollback_rollout(
    rollout_id: uuid.UUID, principal: Deployer, conn: Conn, scheduler: SchedulerDep
) -> RolloutOut:
    """A new rollout (201, `rollback_of` set) returning each device that succeeded in this
    one to its previous model, in batches of the same size; a device without a previous
    model is `skipped`. An open rollout → 409 `rollout_state` (cancel it first)."""
    found = await service.rollback(
        conn,
        principal.org_id,
        rollout_id,
        created_by=principal.user_id,
        actor=principal.audit_actor,
    )
    scheduler.wake()
    return rollout_out(found)
