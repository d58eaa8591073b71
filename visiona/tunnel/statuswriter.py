"""Tunnel status changes and their audit events, written in batches and never dropped.

A connect storm used to need a database transaction per tunnel coming up (and per
tunnel ending): with thousands of agents reconnecting at once they waited for the
pool past its timeout and were dropped (13,986 lost writes in one 10,000-agent
storm). Here a tunnel's status change and its audit event are queued in memory, and
one task writes what is queued every ``interval``, at most :data:`MAX_BATCH` changes
per transaction (one executemany per kind: ``online``; ``reconnecting``/``offline``;
the events), batch after batch until the queue is empty. A batch that fails stays at
the head of the queue and is tried again (backoff up to 5 s); nothing is dropped. The
bound keeps each transaction short while a storm fills the queue: a batch of 5,798
changes, written by a node busy with a 10,000-agent storm, outlasted the statement
timeout, was kept, and failed again larger. :attr:`StatusWriter.backlog` lets the hub
refuse new tunnels (503 ``paced``) while the database is behind, so a slow database
slows the storm down instead of losing records.

Order: a batch applies every ``online`` before the other changes; the epochs
(visiona/tunnel/repository.py) make that order safe — an old tunnel's ``offline``
misses a newer tunnel's ``online`` whichever lands first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from visiona.audit import service as audit
from visiona.tunnel import repository

if TYPE_CHECKING:
    from datetime import datetime

    from visiona.kit.database import Database
    from visiona.wire import RemoteStatus

_LOGGER = logging.getLogger(__name__)
_MAX_BACKOFF = 5.0
#: Seconds a closing writer keeps retrying what is left before it gives up (logged).
CLOSE_GRACE = 20.0
#: The most changes one transaction writes.
MAX_BATCH = 500


@dataclass(frozen=True)
class StatusChange:
    """One queued change: ``online`` (with ``at``) or another status, and its event."""

    device_id: uuid.UUID
    epoch: int
    #: None: only the event (the device's status is another tunnel's now)
    status: RemoteStatus | None
    at: datetime | None = None
    event: dict[str, Any] | None = None
    #: ``online`` only: what the agent said of its service since the tunnel came up,
    #: read when the batch is written (its report may come before the batch does)
    busy: Callable[[], bool] | None = None


def _device_of(row: tuple[Any, ...]) -> str:
    return str(row[0])


class StatusWriter:
    """The node's queue of status changes and audit events (see the module doc)."""

    def __init__(self, db: Database, interval: float) -> None:
        """Write every ``interval`` seconds once :meth:`start` is called."""
        self._db = db
        self._interval = interval
        self._queue: list[StatusChange] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        #: held while a batch is written; the hub's ``last_seen_at`` batch takes it too, so
        #: the node's two writers of device rows never lock them against each other (in a
        #: storm they did: PostgreSQL broke the deadlock by failing one)
        self.lock = asyncio.Lock()
        #: batches written and batches that failed (and were kept), since start
        self.batches = 0
        self.failed = 0

    @property
    def backlog(self) -> int:
        """Changes waiting to be written."""
        return len(self._queue)

    def put(self, change: StatusChange) -> None:
        """Queue ``change`` (written with the next batch)."""
        self._queue.append(change)
        self._ready.set()

    def start(self) -> None:
        """Start writing in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            await asyncio.sleep(self._interval)  # let the batch gather
            while self._queue:
                if not await self.write_once():
                    await asyncio.sleep(min(_MAX_BACKOFF, self._interval * 2**self._failures))
                    break

    async def write_once(self) -> bool:
        """Write the oldest :data:`MAX_BATCH` queued changes in one transaction; False when
        it failed (they are kept, at the head of the queue)."""
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        if not self._queue:
            self._ready.clear()
        if not batch:
            return True
        try:
            async with self.lock, self._db.transaction() as conn:
                online = [
                    (c.device_id, c.epoch, c.at, c.busy() if c.busy else False)
                    for c in batch
                    if c.at is not None
                ]
                # rows in one order (device id) on every node: no lock-order deadlock
                online.sort(key=_device_of)
                await repository.mark_connected(conn, online)
                changes = [
                    (c.device_id, c.epoch, c.status)
                    for c in batch
                    if c.at is None and c.status is not None
                ]
                changes.sort(key=_device_of)
                await repository.set_remote_status(conn, changes)
                await audit.record_prepared(conn, [c.event for c in batch if c.event])
        except asyncio.CancelledError:  # stopped mid-batch (the writer's close bound): kept
            self._queue[:0] = batch
            raise
        except Exception as err:  # noqa: BLE001 - kept and retried; the next batch repairs it
            self._queue[:0] = batch
            self._ready.set()
            self.failed += 1
            self._failures += 1
            if self._failures == 1:
                _LOGGER.warning(
                    "tunnel: status batch of %s change(s) not written (%s); kept, retrying",
                    len(batch),
                    type(err).__name__,
                )
            return False
        self.batches += 1
        if self._failures:
            _LOGGER.info(
                "tunnel: status writes caught up after %s failed batch(es)", self._failures
            )
            self._failures = 0
        return True

    async def close(self) -> None:
        """Stop the task and write what is left (retrying up to :data:`CLOSE_GRACE` s).

        The task is stopped between two batches, never inside one: a batch cancelled
        while its transaction commits would be kept and written twice (its events' ids
        refused as duplicates, batch after batch, until the grace ran out — 7,000
        changes lost at one 10,000-tunnel shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):  # a hung statement cannot hold the stop
                if self._task is not None:
                    async with self.lock:  # no batch in flight
                        self._task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await self._task
                    self._task = None
                while self._queue:
                    if not await self.write_once():
                        await asyncio.sleep(0.5)
        if self._queue:
            _LOGGER.error("tunnel: %s status change(s) not written at shutdown", len(self._queue))
