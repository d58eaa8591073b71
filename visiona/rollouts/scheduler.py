"""The rollout scheduler: runs on every node, acts only under the lease.

Each turn (every ``VISIONA_ROLLOUT_INTERVAL`` seconds while a rollout is open, every
:data:`IDLE_WAIT` seconds otherwise, or sooner when woken), the node
holding the lease (:mod:`visiona.rollouts.lease`) drives every open rollout, each in
short transactions:

1. *fence*: the rollout's ``epoch`` is raised to the lease's fencing token (a rollout
   a newer leader fenced is left alone); every later write of this turn is
   conditional on it;
2. *sync*: a selector rollout takes in the devices that match now; devices unpaired
   meanwhile are cancelled; batched devices not yet sent are ``waiting`` while offline
   and ``queued`` once online (on whichever node);
3. *settle*: a device ``transferring`` under a deployment this node is not running (a
   previous leader's) takes its deployment's outcome; one whose node died before or
   during the transfer (the deployment failed as lost, interrupted or restarted) is
   queued again (at most :data:`MAX_ATTEMPTS` tries) and sent again only on fresh
   knowledge of what its agent runs (:func:`repository.candidates
   <visiona.rollouts.repository.candidates>`: the agent reconnected after that
   transfer and reported since; or nothing had been sent; or the transfer timeout
   passed) — one that reports the model meanwhile counts as ``succeeded``, never
   sent twice;
4. *plan* (:mod:`visiona.rollouts.planner`): auto-abort, the deadline, the next batch,
   completion; one audit event per batch and per state change;
5. *dispatch*: up to ``VISIONA_ROLLOUT_MAX_TRANSFERS`` transfers in flight per node.
   A device already running the model is ``skipped``. Otherwise its deployment is
   recorded and the device moved to ``transferring`` (with the token) in one
   transaction, before a byte is sent; the transfer itself is the deployments
   feature's (:meth:`Delivery.deliver <visiona.deployments.delivery.Delivery.deliver>`:
   this node's tunnel or the node holding it), and its outcome is written only while
   the device is still ``transferring`` with that deployment.

A node killed mid-batch leaves devices ``transferring`` whose deployments the
deployments' recovery fails (no run lease) or whose node finishes them; the next
leader settles them at step 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from visiona.audit import service as audit
from visiona.deployments import service as deployments
from visiona.deployments.delivery import OWNER_LOST, OWNER_UNREACHABLE
from visiona.deployments.recovery import NODE_LOST, RESTARTED
from visiona.deployments.schemas import DeploymentStatus
from visiona.devices import fleet_repository
from visiona.devices import fleet_service as fleet
from visiona.kit.clock import utcnow
from visiona.kit.errors import AppError, DatabaseUnavailableError
from visiona.models import service as models
from visiona.rollouts import planner, repository
from visiona.rollouts.lease import Lease, LocalLease, RedisLease
from visiona.rollouts.planner import Counts, Progress, parse_batch
from visiona.rollouts.repository import Candidate, Rollout

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncConnection

    from visiona.cluster.service import Cluster
    from visiona.deployments.delivery import Delivery
    from visiona.deployments.repository import Deployment
    from visiona.deployments.service import ModelFile
    from visiona.kit.database import Database
    from visiona.kit.settings import Settings

_LOGGER = logging.getLogger(__name__)
#: How many times a device is tried when its transfers are lost (a node died).
MAX_ATTEMPTS = 3
#: Deployment failures that say the transfer was lost, not refused: tried again.
LOST = frozenset(
    {
        NODE_LOST,
        RESTARTED,
        OWNER_LOST,
        OWNER_UNREACHABLE,
        deployments.OFFLINE_REASON,
        deployments.INTERRUPTED_REASON,
    }
)
#: Lost transfers that failed before a byte reached the agent (no tunnel anywhere, the
#: node holding it unreachable): sent again without waiting for the agent to reconnect.
NOTHING_SENT = frozenset({deployments.OFFLINE_REASON, OWNER_UNREACHABLE})
DEADLINE_REASON = "the deadline passed"
#: Seconds a device whose transfer failed before anything was sent waits before it is
#: tried again (the others wait for their agent's report on a new tunnel instead).
RETRY_GRACE = 5.0
#: Seconds a device whose transfer was lost waits, once its agent reconnected, for that
#: agent's report before it is sent its model again anyway (no device is forgotten;
#: the agent does not load a model it runs already a second time).
SILENT_WAIT = 60.0
#: Seconds between the turns of a scheduler with no open rollout (one created on
#: another node is seen within this).
IDLE_WAIT = 5.0
_ACTIVE = (DeploymentStatus.PENDING.value, DeploymentStatus.TRANSFERRING.value)


def build_lease(redis: Redis | None, cluster: Cluster) -> Lease:
    """A Redis lease in a cluster; a single node holds it alone."""
    if redis is None or cluster.lease_ttl is None or cluster.node_id is None:
        return LocalLease()
    return RedisLease(redis, node_id=cluster.node_id, ttl=cluster.lease_ttl)


def _progress(by_batch: dict[int | None, dict[str, int]]) -> Progress:
    unbatched = sum(by_batch.get(None, {}).values())
    batches = {b: Counts(states) for b, states in by_batch.items() if b is not None}
    return Progress(batches=batches, unbatched=unbatched)


class _AbandonedError(Exception):
    """The device was taken or the rollout fenced meanwhile: roll back the dispatch."""


class Scheduler:
    """Drives open rollouts on the node holding the lease (started by the composition root)."""

    def __init__(self, db: Database, settings: Settings, delivery: Delivery, lease: Lease) -> None:
        """Drive ``db``'s rollouts through ``delivery`` while ``lease`` is held."""
        self._db = db
        self._delivery = delivery
        self._lease = lease
        self._max = settings.rollout_max_transfers
        self._interval = settings.rollout_interval
        self._transfer_timeout = settings.deploy_transfer_timeout
        self._inflight: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        """Transfers this node's scheduler runs now."""
        return len(self._inflight)

    def start(self) -> None:
        """Start the turns."""
        self._loop = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """Run the next turn now (a rollout was created or resumed)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop the turns, interrupt the transfers in flight (their devices are tried again
        by the next leader) and give the lease up."""
        tasks = [t for t in (self._loop, *self._inflight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loop = None
        try:
            await self._lease.release()
        except Exception as err:  # noqa: BLE001 - it expires by itself
            _LOGGER.warning("rollouts: lease not released: %s", type(err).__name__)

    async def _run(self) -> None:
        while True:
            busy = True
            try:
                token = await self._lease.hold()
                if token is not None:
                    busy = await self.turn(token)
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailableError:  # busy (SQLite's one writer) or away: expected
                _LOGGER.warning("rollouts: scheduler turn skipped: the database is busy or away")
            except Exception:
                _LOGGER.exception("rollouts: scheduler turn failed; next turn")
            self._wake.clear()
            # Idle (no open rollout, nothing in flight): look less often; a rollout
            # created or resumed on this node wakes it at once.
            wait = self._interval if busy or self._inflight else max(self._interval, IDLE_WAIT)
            wait = min(wait, self._lease.renew_every)  # renewed before it expires
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def turn(self, token: int) -> bool:
        """One turn over every open rollout, with the fencing token ``token``; whether any
        rollout is open."""
        # unit of work: the scan's own read
        async with self._db.transaction() as conn:
            open_ids = await repository.open_rollouts(conn)
        for rollout_id in open_ids:
            await self._drive(rollout_id, token)
        return bool(open_ids)

    async def _drive(self, rollout_id: uuid.UUID, token: int) -> None:
        now = utcnow()
        # unit of work: one rollout's bookkeeping (fence, sync, settle, plan)
        async with self._db.transaction() as conn:
            rollout = await repository.fence(conn, rollout_id, token)
            if rollout is None:
                return
            await self._take_in(conn, rollout, now)
            for deployment_id in await repository.sync_devices(conn, rollout_id, now):
                await deployments.confirm_delivered(conn, deployment_id, LOST)
            await self._settle(conn, rollout, now)
            running = await self._plan(conn, rollout, token, now)
            free = self._max - len(self._inflight)
            settled = now - timedelta(seconds=RETRY_GRACE)
            chosen = (
                await repository.candidates(
                    conn,
                    rollout_id,
                    free,
                    settled_before=settled,
                    outlived_before=now - timedelta(seconds=self._transfer_timeout),
                    silent_before=now - timedelta(seconds=SILENT_WAIT),
                    nothing_sent=NOTHING_SENT,
                )
                if running and free > 0
                else []
            )
        for candidate in chosen:
            await self._dispatch(rollout, candidate, token)

    async def _take_in(self, conn: AsyncConnection, rollout: Rollout, now: datetime) -> None:
        """A selector rollout takes in the devices that match now."""
        if rollout.selector is None or rollout.model_id is None:
            return
        try:
            model = await models.require_model(conn, rollout.org_id, rollout.model_id)
        except AppError:  # the model was deleted: no more devices
            return
        selector = fleet.parse_selector(rollout.selector)
        if selector is None or not model.sha256:
            return
        added = await repository.add_matching(
            conn,
            rollout,
            fleet_repository.selector_clause(selector),
            chip=model.target_chip,
            sha256=model.sha256,
            now=now,
        )
        if added:
            _LOGGER.info("rollout %s: %d device(s) matched its selector", rollout.id, added)

    async def _settle(self, conn: AsyncConnection, rollout: Rollout, now: datetime) -> None:
        """Devices transferring under a deployment this node does not run take its outcome."""
        for item in await repository.in_flight(conn, rollout.id):
            if item.deployment_id is None or item.deployment_id in self._inflight:
                continue
            if item.status in _ACTIVE:
                continue  # its node still runs it, or the deployments' recovery fails it
            delivered = item.status is not None and DeploymentStatus(item.status).delivered
            if delivered:
                values: dict[str, object] = {"state": "succeeded", "error": None}
            elif item.error in LOST and item.attempts < MAX_ATTEMPTS:
                values = {"state": "queued", "error": item.error}
            else:
                values = {"state": "failed", "error": item.error}
            await repository.record_outcome(
                conn, rollout.id, item.device_id, item.deployment_id, now=now, **values
            )

    async def _plan(
        self, conn: AsyncConnection, rollout: Rollout, token: int, now: datetime
    ) -> bool:
        """Deadline, auto-abort, next batch, completion; whether it still runs."""
        by_batch = (await repository.counts(conn, [rollout.id]))[rollout.id]
        progress = _progress(by_batch)
        if rollout.deadline is not None and now >= rollout.deadline:
            return await self._at_deadline(conn, rollout, token, progress, now)
        if rollout.state != "running":
            return False
        reason = planner.abort_reason(progress, rollout.max_failure_percent, rollout.resumed_failed)
        if reason is not None:
            if await repository.finish(
                conn, rollout.id, token, state="paused", reason=reason, now=now
            ):
                _LOGGER.warning("rollout %s paused: %s", rollout.id, reason)
                await self._record(conn, rollout, "rollout.paused", {"reason": reason})
            return False
        step = planner.next_batch(
            progress,
            canary=rollout.canary,
            spec=parse_batch(rollout.batch),
            max_failure_percent=rollout.max_failure_percent,
        )
        if step is not None:
            number, size = step
            if progress.current is not None:
                await self._batch_finished(conn, rollout, progress.current, progress)
            taken = await repository.assign_batch(
                conn, rollout.id, token, batch=number, size=size, now=now
            )
            if taken:
                _LOGGER.info("rollout %s: batch %d started (%d devices)", rollout.id, number, taken)
                await self._record(
                    conn, rollout, "rollout.batch_started", {"batch": number, "devices": taken}
                )
            return True
        open_ended = rollout.selector is not None and rollout.deadline is not None
        if planner.finished(progress) and not open_ended:
            if await repository.finish(
                conn, rollout.id, token, state="completed", reason=None, now=now
            ):
                if progress.current is not None:
                    await self._batch_finished(conn, rollout, progress.current, progress)
                overall = progress.overall()
                await self._record(
                    conn,
                    rollout,
                    "rollout.completed",
                    {s: overall[s] for s in ("succeeded", "failed", "skipped", "cancelled")},
                )
                _LOGGER.info("rollout %s completed", rollout.id)
            return False
        return True

    async def _at_deadline(
        self,
        conn: AsyncConnection,
        rollout: Rollout,
        token: int,
        progress: Progress,
        now: datetime,
    ) -> bool:
        """The deadline passed: cancel what was not sent; end once no transfer runs."""
        cancelled = await repository.cancel_pending(conn, rollout.id, DEADLINE_REASON, now)
        overall = progress.overall()
        if overall["transferring"]:
            return False
        left = cancelled + progress.unbatched
        state = "failed" if left or overall["cancelled"] else "completed"
        reason = f"{DEADLINE_REASON} with {left} device(s) not deployed" if left else None
        if rollout.state == "running":
            ended = await repository.finish(
                conn, rollout.id, token, state=state, reason=reason, now=now
            )
        else:
            ended = (
                await repository.set_rollout_state(
                    conn, rollout.id, from_states=("paused",), state=state, reason=reason, now=now
                )
                is not None
            )
        if ended:
            if state == "failed":
                await self._record(conn, rollout, "rollout.failed", {"reason": reason})
            else:
                await self._record(
                    conn,
                    rollout,
                    "rollout.completed",
                    {s: overall[s] for s in ("succeeded", "failed", "skipped", "cancelled")},
                )
        return False

    async def _batch_finished(
        self, conn: AsyncConnection, rollout: Rollout, batch: int, progress: Progress
    ) -> None:
        counts = progress.batches[batch]
        await self._record(
            conn,
            rollout,
            "rollout.batch_finished",
            {
                "batch": batch,
                "succeeded": counts["succeeded"],
                "failed": counts["failed"],
                "skipped": counts["skipped"],
            },
        )

    async def _record(
        self, conn: AsyncConnection, rollout: Rollout, action: str, detail: dict[str, object]
    ) -> None:
        await audit.record(
            conn,
            action,
            actor=audit.SYSTEM,
            org_id=rollout.org_id,
            owner_id=rollout.owner_user_id,
            target_id=rollout.id,
            detail=detail,
        )

    async def _dispatch(self, rollout: Rollout, candidate: Candidate, token: int) -> None:
        """Skip a device that runs the model; else record its deployment and start it."""
        device_id = candidate.device_id
        now = utcnow()
        if candidate.model_id is None:
            return
        if candidate.model_sha256 and candidate.current_sha256 == candidate.model_sha256:
            # unit of work: the skip
            async with self._db.transaction() as conn:
                tried = candidate.attempts > 0  # a lost transfer that did arrive
                moved = await repository.set_device(
                    conn,
                    rollout.id,
                    device_id,
                    token,
                    from_states=("queued",),
                    now=now,
                    state="succeeded" if tried else "skipped",
                    error=None if tried else "the device already runs the model",
                )
                if moved and tried and candidate.deployment_id is not None:
                    await deployments.confirm_delivered(conn, candidate.deployment_id, LOST)
            return
        try:
            # unit of work: the deployment's record and the device's transferring, together
            async with self._db.transaction() as conn:
                deployment, model = await self._record_dispatch(conn, rollout, candidate, token)
        except _AbandonedError:
            return
        except deployments.DeploymentInProgressError:
            return  # another deployment to the device runs: a later turn
        except AppError as err:  # the device or model went away, chip, no file
            # unit of work: the refusal
            async with self._db.transaction() as conn:
                await repository.set_device(
                    conn,
                    rollout.id,
                    device_id,
                    token,
                    from_states=("queued",),
                    now=now,
                    state="failed",
                    error=err.message,
                )
            return
        if candidate.attempts:
            _LOGGER.info(
                "rollout %s: device %s is sent the model again (try %d; its lost transfer %s)",
                rollout.id,
                device_id,
                candidate.attempts + 1,
                candidate.deployment_id,
            )
        task = asyncio.get_running_loop().create_task(
            self._transfer(rollout.id, deployment, model, candidate.attempts + 1)
        )
        self._inflight[deployment.id] = task

    async def _record_dispatch(
        self, conn: AsyncConnection, rollout: Rollout, candidate: Candidate, token: int
    ) -> tuple[Deployment, ModelFile]:
        """Record the device's deployment and move it to ``transferring`` (with ``token``);
        :class:`_AbandonedError` when it was taken or the rollout fenced meanwhile."""
        assert candidate.model_id is not None  # noqa: S101 - checked by the caller
        deployment, model = await deployments.prepare(
            conn,
            rollout.org_id,
            rollout.owner_user_id,
            candidate.device_id,
            candidate.model_id,
            transfer_timeout=self._transfer_timeout,
        )
        moved = await repository.set_device(
            conn,
            rollout.id,
            candidate.device_id,
            token,
            from_states=("queued",),
            now=utcnow(),
            state="transferring",
            deployment_id=deployment.id,
            epoch=token,
            attempts=candidate.attempts + 1,
            error=None,
        )
        if not moved:
            raise _AbandonedError
        return deployment, model

    async def _transfer(
        self, rollout_id: uuid.UUID, deployment: Deployment, model: ModelFile, attempts: int
    ) -> None:
        """Run one transfer and write its outcome on the device."""
        try:
            try:
                record = await self._delivery.deliver(deployment, model)
                error = record.error
                delivered = record.status.delivered
            except deployments.DeploymentFailedError as err:
                error, delivered = err.record.error, False
            if delivered:
                values: dict[str, object] = {"state": "succeeded", "error": None}
            elif error in LOST and attempts < MAX_ATTEMPTS:
                values = {"state": "queued", "error": error}
            else:
                values = {"state": "failed", "error": error}
            # unit of work: the outcome
            async with self._db.transaction() as conn:
                await repository.record_outcome(
                    conn, rollout_id, deployment.device_id, deployment.id, now=utcnow(), **values
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception("rollout %s: transfer %s failed", rollout_id, deployment.id)
        finally:
            self._inflight.pop(deployment.id, None)
            self._wake.set()
