"""Retention of the audit trail: delete expired events in bounded batches.

This is an edge, like a request: it opens one short transaction per batch
(:data:`visiona.audit.service.PRUNE_BATCH` rows), so a prune never holds a long
delete, and a concurrent writer waits for one batch at most. ``visiona audit prune``
runs :func:`prune` once; the server runs :class:`Pruner` (at start-up, then every
``audit_prune_interval`` seconds, one hour by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from visiona.audit import outbox, service

if TYPE_CHECKING:
    from visiona.kit.database import Database

_LOGGER = logging.getLogger(__name__)


async def prune(
    db: Database,
    retention_days: int,
    *,
    batch: int = service.PRUNE_BATCH,
    now: datetime | None = None,
) -> int:
    """Delete every event older than ``retention_days``, ``batch`` rows per transaction,
    then the webhooks' finished deliveries of that age (never a pending one).

    Returns how many events were deleted. The cutoff is fixed when the prune starts, so events
    written meanwhile are never touched.
    """
    cutoff = service.retention_cutoff(retention_days, now)
    total = 0
    while True:
        # unit of work: one short transaction per batch (this module is the edge)
        async with db.transaction() as conn:
            deleted = await service.prune_batch(conn, cutoff, batch)
        total += deleted
        if deleted < batch:
            break
        await asyncio.sleep(0)  # let requests in between two batches
    if total:
        _LOGGER.info("audit: pruned %d event(s) older than %d day(s)", total, retention_days)
    log = 0
    while True:  # the webhooks' delivery log ages out with the events it reports
        async with db.transaction() as conn:
            deleted = await outbox.prune_batch(conn, cutoff, batch)
        log += deleted
        if deleted < batch:
            break
        await asyncio.sleep(0)
    if log:
        _LOGGER.info("audit: pruned %d finished webhook delivery(ies) older than %d day(s)",
                     log, retention_days)  # fmt: skip
    return total


class Pruner:
    """The server's own prune: at start-up, then every ``interval`` seconds."""

    def __init__(self, db: Database, retention_days: int, interval: float) -> None:
        """Prepare; :meth:`start` begins."""
        self._db = db
        self._days = retention_days
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        #: Completed prunes since start (for tests and the log).
        self.runs = 0

    def start(self) -> None:
        """Start the loop as a background task."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await prune(self._db, self._days)
            except Exception as err:  # noqa: BLE001 - the next interval retries
                _LOGGER.warning("audit: prune failed: %s", type(err).__name__)
            self.runs += 1
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        """Cancel the loop (a batch in flight rolls back)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
