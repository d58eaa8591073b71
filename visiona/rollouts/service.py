"""Use cases of rollouts: create, read, pause, resume, cancel and roll back.

Every function takes the connection of a unit of work opened at the edge and never
commits; each change records its audit event on the same connection. Driving a
rollout (batches, transfers, auto-abort, completion) is the scheduler's
(:mod:`visiona.rollouts.scheduler`), which runs under a lease.

Scope: the caller's organisation (``org_id``), in :func:`require_rollout`, the
repository's scoped queries and the devices' and models' ``require_*``; another
organisation's rollout is a 404. ``actor`` is who the audit trail names.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.service import Actor
from visiona.deployments.service import ChipMismatchError, ModelFileMissingError
from visiona.devices import fleet_repository
from visiona.devices import fleet_service as fleet
from visiona.devices import service as devices
from visiona.kit.clock import utcnow
from visiona.kit.errors import ConflictError, NotFoundError, ValidationFailedError
from visiona.kit.pagination import Page, PageRequest
from visiona.kit.schema import ROLLOUT_OPEN
from visiona.models import service as models
from visiona.rollouts import repository
from visiona.rollouts.planner import BatchSpec, Counts
from visiona.rollouts.repository import Rollout, RolloutDevice

_LOGGER = logging.getLogger(__name__)
#: At most this many devices in an explicit list.
MAX_DEVICE_IDS = 10_000
FINISHED = ("completed", "cancelled", "failed")


class RolloutStateError(ConflictError):
    """The rollout is not in a state that allows the action (409)."""

    code = "rollout_state"
    default_message = "The rollout's state does not allow this."


@dataclass(frozen=True, slots=True)
class RolloutView:
    """A rollout with its devices' counts: overall and per batch (None: not in one yet)."""

    rollout: Rollout
    by_batch: dict[int | None, dict[str, int]]

    @property
    def counts(self) -> Counts:
        """The counts of every device of the rollout."""
        merged: dict[str, int] = {}
        for states in self.by_batch.values():
            for state, n in states.items():
                merged[state] = merged.get(state, 0) + n
        return Counts(merged)


def _invalid(field: str, message: str) -> ValidationFailedError:
    return ValidationFailedError(
        [{"loc": ["body", field], "message": message, "type": "value_error"}]
    )


async def require_rollout(
    conn: AsyncConnection, org_id: uuid.UUID, rollout_id: uuid.UUID
) -> Rollout:
    """The organisation's rollout, or 404 (also when it is another organisation's)."""
    rollout = await repository.get_rollout(conn, org_id, rollout_id)
    if rollout is None:
        raise NotFoundError("Rollout not found.")
    return rollout


async def create_rollout(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    created_by: uuid.UUID,
    *,
    actor: Actor,
    model_id: uuid.UUID,
    selector: str | None,
    device_ids: Sequence[uuid.UUID] | None,
    canary: int,
    batch: BatchSpec,
    max_failure_percent: int,
    deadline: datetime | None,
) -> RolloutView:
    """Create a running rollout of the model to the selected or listed devices.

    Exactly one of ``selector`` (400 ``invalid_selector`` when bad; devices of the
    model's chip only; dynamic while the rollout is open) and ``device_ids`` (each the
    organisation's live device, else 404; another chip → 409 ``chip_mismatch``). The
    model must be the organisation's (404) and have a file (409 ``model_file_missing``); a
    deadline in the past → 422. Records ``rollout.created``.
    """
    if (selector is None) == (device_ids is None):
        raise _invalid("selector", "give either selector or device_ids")
    now = utcnow()
    if deadline is not None and deadline <= now:
        raise _invalid("deadline", "the deadline is in the past")
    parsed = fleet.parse_selector(selector)
    model = await models.require_model(conn, org_id, model_id)
    if not model.storage_key or not model.sha256:
        raise ModelFileMissingError()
    if device_ids is not None:
        if not device_ids:
            raise _invalid("device_ids", "list at least one device")
        for device_id in dict.fromkeys(device_ids):
            device = await devices.require_device(conn, org_id, device_id)
            kind = (device.device_type or "").strip().lower()
            if kind != model.target_chip:
                raise ChipMismatchError(
                    f"Device {device_id} is {kind or 'of an unknown type'}; the model is "
                    f"built for {model.target_chip}."
                )
    rollout = await repository.insert_rollout(
        conn,
        id=uuid.uuid4(),
        org_id=org_id,
        owner_user_id=created_by,
        model_id=model.id,
        selector=selector,
        canary=canary,
        batch=str(batch),
        max_failure_percent=max_failure_percent,
        deadline=deadline,
        state="running",
        created_at=now,
        updated_at=now,
    )
    if device_ids is not None:
        added = await repository.add_devices(
            conn, rollout.id, device_ids, model_id=model.id, sha256=model.sha256, now=now
        )
    else:
        assert parsed is not None  # noqa: S101 - selector given, so parsed
        added = await repository.add_matching(
            conn,
            rollout,
            fleet_repository.selector_clause(parsed),
            chip=model.target_chip,
            sha256=model.sha256,
            now=now,
        )
    await audit.record(
        conn,
        "rollout.created",
        actor=actor,
        org_id=org_id,
        owner_id=rollout.owner_user_id,
        target_id=rollout.id,
        detail={
            "model_id": str(model.id),
            "selector": selector,
            "devices": added,
            "canary": canary,
            "batch": str(batch),
            "rollback_of": None,
        },
    )
    _LOGGER.info("rollout %s of model %s created for %d device(s)", rollout.id, model.id, added)
    return await view(conn, rollout)


async def view(conn: AsyncConnection, rollout: Rollout) -> RolloutView:
    """The rollout with its counts."""
    found = await repository.counts(conn, [rollout.id])
    return RolloutView(rollout=rollout, by_batch=found[rollout.id])


async def get_rollout(
    conn: AsyncConnection, org_id: uuid.UUID, rollout_id: uuid.UUID
) -> RolloutView:
    """The organisation's rollout with its counts (404 otherwise)."""
    return await view(conn, await require_rollout(conn, org_id, rollout_id))


async def list_rollouts(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> Page[RolloutView]:
    """One page of the organisation's rollouts with their counts, newest first."""
    found = await repository.list_rollouts(conn, org_id, page)
    counted = await repository.counts(conn, [r.id for r in found.items])
    return Page(
        items=[RolloutView(rollout=r, by_batch=counted[r.id]) for r in found.items],
        next_cursor=found.next_cursor,
    )


async def list_devices(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    rollout_id: uuid.UUID,
    state: str | None,
    page: PageRequest,
) -> Page[RolloutDevice]:
    """One page of the organisation's rollout's devices, of ``state`` when given (404
    otherwise)."""
    await require_rollout(conn, org_id, rollout_id)
    return await repository.list_devices(conn, rollout_id, state, page)


async def pause(
    conn: AsyncConnection, org_id: uuid.UUID, rollout_id: uuid.UUID, *, actor: Actor
) -> RolloutView:
    """Pause a running rollout (no new transfer starts; running ones finish). Paused
    already: unchanged. Finished → 409 ``rollout_state``."""
    rollout = await require_rollout(conn, org_id, rollout_id)
    if rollout.state == "paused":
        return await view(conn, rollout)
    reason = "paused by a user"
    changed = await repository.set_rollout_state(
        conn, rollout_id, from_states=("running",), state="paused", reason=reason, now=utcnow()
    )
    if changed is None:
        raise RolloutStateError(f"The rollout is {rollout.state}; only a running one pauses.")
    await _record(conn, changed, "rollout.paused", actor, {"reason": reason})
    return await view(conn, changed)


async def resume(
    conn: AsyncConnection, org_id: uuid.UUID, rollout_id: uuid.UUID, *, actor: Actor
) -> RolloutView:
    """Resume a paused rollout (also one its failures paused: only a new failure over the
    threshold pauses it again). Running already: unchanged. Finished → 409."""
    rollout = await require_rollout(conn, org_id, rollout_id)
    if rollout.state == "running":
        return await view(conn, rollout)
    failed = await repository.failed_count(conn, rollout_id)
    changed = await repository.set_rollout_state(
        conn,
        rollout_id,
        from_states=("paused",),
        state="running",
        reason=None,
        now=utcnow(),
        resumed_failed=failed,
    )
    if changed is None:
        raise RolloutStateError(f"The rollout is {rollout.state}; only a paused one resumes.")
    await _record(conn, changed, "rollout.resumed", actor, None)
    return await view(conn, changed)


async def cancel(
    conn: AsyncConnection, org_id: uuid.UUID, rollout_id: uuid.UUID, *, actor: Actor
) -> RolloutView:
    """Cancel an open rollout: its queued and waiting devices are ``cancelled`` (transfers
    already running finish and are recorded). Finished → 409 ``rollout_state``."""
    rollout = await require_rollout(conn, org_id, rollout_id)
    now = utcnow()
    reason = "cancelled by a user"
    changed = await repository.set_rollout_state(
        conn, rollout_id, from_states=ROLLOUT_OPEN, state="cancelled", reason=reason, now=now
    )
    if changed is None:
        raise RolloutStateError(f"The rollout is {rollout.state} already.")
    await repository.cancel_pending(conn, rollout_id, reason, now)
    await _record(conn, changed, "rollout.cancelled", actor, {"reason": reason})
    return await view(conn, changed)


async def rollback(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    rollout_id: uuid.UUID,
    *,
    created_by: uuid.UUID,
    actor: Actor,
) -> RolloutView:
    """A new rollout returning each device that succeeded in the finished rollout to its
    previous model (one without a previous model is ``skipped``), in the same batches
    (no canary). Open → 409 ``rollout_state`` (pause and cancel it first)."""
    origin = await require_rollout(conn, org_id, rollout_id)
    if origin.state not in FINISHED:
        raise RolloutStateError(f"The rollout is {origin.state}; cancel it before rolling it back.")
    now = utcnow()
    rollout = await repository.insert_rollout(
        conn,
        id=uuid.uuid4(),
        org_id=org_id,
        owner_user_id=created_by,
        model_id=None,
        selector=None,
        canary=0,
        batch=origin.batch,
        max_failure_percent=origin.max_failure_percent,
        deadline=None,
        state="running",
        rollback_of=origin.id,
        created_at=now,
        updated_at=now,
    )
    added = await repository.add_rollback_devices(conn, rollout.id, origin.id, now)
    await audit.record(
        conn,
        "rollout.created",
        actor=actor,
        org_id=org_id,
        owner_id=rollout.owner_user_id,
        target_id=rollout.id,
        detail={
            "model_id": None,
            "selector": None,
            "devices": added,
            "canary": 0,
            "batch": origin.batch,
            "rollback_of": str(origin.id),
        },
    )
    return await view(conn, rollout)


async def _record(
    conn: AsyncConnection,
    rollout: Rollout,
    action: str,
    actor: Actor,
    detail: dict[str, object] | None,
) -> None:
    await audit.record(
        conn,
        action,
        actor=actor,
        org_id=rollout.org_id,
        owner_id=rollout.owner_user_id,
        target_id=rollout.id,
        detail=detail,
    )
