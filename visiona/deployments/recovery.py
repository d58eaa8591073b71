"""Deployments a stopped server left unfinished are failed, never left ``transferring``.

While a transfer runs, its node holds a run lease (:meth:`Cluster.running
<visiona.cluster.service.Cluster.running>`, ``dep:run:{id}`` in Redis). In a cluster
every node sweeps, once per lease TTL, the records still ``pending`` or
``transferring`` whose last change is older than the TTL and whose run lease is gone:
the node running them died, so they are ``failed``. A single node fails at start-up
whatever its previous run left unfinished. :class:`Recovery` is the feature's live
object for that, started and stopped by the composition root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from visiona.deployments import repository
from visiona.deployments.schemas import DeploymentStatus
from visiona.deployments.service import mark, record_outcome
from visiona.kit.clock import utcnow

if TYPE_CHECKING:
    from visiona.cluster.service import Cluster
    from visiona.kit.database import Database

_LOGGER = logging.getLogger(__name__)
NODE_LOST = "the server node running the transfer stopped"
RESTARTED = "the server restarted during the transfer"
_BATCH = 500


async def sweep(db: Database, cluster: Cluster, ttl: float) -> int:
    """Fail the unfinished deployments older than ``ttl`` seconds no live node is running;
    how many were failed."""
    cutoff = utcnow() - timedelta(seconds=ttl)
    # unit of work: the sweep's own read; each fail below is its own short write
    async with db.transaction() as conn:
        candidates = await repository.unfinished_before(conn, cutoff)
    if not candidates:
        return 0
    alive = await cluster.running_of(candidates)
    failed = 0
    for deployment_id in candidates:
        if deployment_id in alive:
            continue
        record = await mark(db, deployment_id, DeploymentStatus.FAILED, NODE_LOST)
        if record.error == NODE_LOST:
            failed += 1
            _LOGGER.warning("deployment %s failed: %s", deployment_id, NODE_LOST)
    return failed


async def sweep_loop(db: Database, cluster: Cluster, ttl: float) -> None:
    """:func:`sweep` once per ``ttl`` until cancelled (a failure waits for the next turn)."""
    while True:
        try:
            await sweep(db, cluster, ttl)
        except Exception as err:  # noqa: BLE001 - database or Redis away: next turn
            _LOGGER.warning("cluster: deployment sweep failed: %s", type(err).__name__)
        await asyncio.sleep(ttl)


async def fail_left_unfinished(db: Database) -> int:
    """Single node at start-up: every unfinished deployment was its previous run's."""
    failed = 0
    while True:
        # unit of work: start-up reset, one batch per transaction
        async with db.transaction() as conn:
            batch = await repository.unfinished_before(conn, utcnow(), _BATCH)
            for deployment_id in batch:
                record = await repository.set_status(
                    conn,
                    deployment_id,
                    status=DeploymentStatus.FAILED,
                    now=utcnow(),
                    error=RESTARTED,
                )
                if record is not None:  # its audit event, in the same transaction
                    await record_outcome(conn, record, DeploymentStatus.FAILED)
        failed += len(batch)
        if len(batch) < _BATCH:
            break
    if failed:
        _LOGGER.info("deployments: failed %s left unfinished by a previous run", failed)
    return failed


class Recovery:
    """Fails what stopped servers left unfinished: at start-up alone, by sweeping in a cluster."""

    def __init__(self, db: Database, cluster: Cluster) -> None:
        """Recover ``db``'s deployments as ``cluster`` allows."""
        self._db = db
        self._cluster = cluster
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """A single node: fail the previous run's leftovers now; a cluster node: start sweeping."""
        ttl = self._cluster.lease_ttl
        if ttl is None:
            await fail_left_unfinished(self._db)
            return
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(sweep_loop(self._db, self._cluster, ttl))

    async def stop(self) -> None:
        """Stop sweeping."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
