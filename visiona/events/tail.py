"""The tail: one node's reader of newly committed audit events.

The audit trail is written in the same transaction as every change, so a committed row
is exactly what happened; the tail finds the rows committed since its last read and
hands them to the hub (:mod:`visiona.events.hub`). Every node reads the shared
database, so every node sees every organisation's events, whichever node wrote them.

Transactions commit out of order, and tunnel events are written in batches
(:mod:`visiona.tunnel.statuswriter`) some time after they happened: each read asks for
the events that happened after *the start of the previous read minus the lookback*,
ordered by (``occurred_at``, ``id``), and skips the ids it has already seen (kept for as
long as the window can still return them). A paused event loop loses nothing: the
window starts where the last successful read did. An event committed more than the
lookback after its ``occurred_at`` (a node whose clock is behind by more, a status
batch retried for longer) is in the trail but not on the live stream.

:meth:`Tail.prime` reads the window once without handing anything out, so a tail
started for a new subscriber sends only what commits from then on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from visiona.audit.repository import AuditEvent
from visiona.events import repository
from visiona.kit.clock import utcnow
from visiona.kit.database import Database

#: Keys read per page of one read (a read pages until it has the whole window).
PAGE = 2000
#: Rows fetched per ``IN (...)`` statement.
FETCH_CHUNK = 500
#: The most ids remembered; beyond, the oldest are forgotten (a window this full is a
#: storm the lookback cannot cover anyway).
MAX_SEEN = 200_000

Deliver = Callable[[list[AuditEvent]], None]


class Tail:
    """Reads the events committed since its previous read (see the module doc)."""

    def __init__(self, db: Database, *, lookback: float, deliver: Deliver) -> None:
        """Read ``db``; ``lookback`` seconds of overlap per read; ``deliver`` gets each
        read's new events, oldest first."""
        self._db = db
        self._lookback = timedelta(seconds=lookback)
        self._deliver = deliver
        self._seen: dict[uuid.UUID, datetime] = {}
        self._last_read: datetime | None = None

    @property
    def seen(self) -> int:
        """Ids remembered right now (for tests and metrics)."""
        return len(self._seen)

    async def prime(self) -> None:
        """Read the window without handing anything out: from now on, only what commits
        after this read is delivered."""
        await self._read(deliver=False)

    async def poll(self) -> int:
        """One read: deliver the events committed since the previous one; how many."""
        return await self._read(deliver=True)

    async def _read(self, *, deliver: bool) -> int:
        started = utcnow()
        since = (self._last_read or started) - self._lookback
        fresh: list[repository.Key] = []
        async with self._db.reading() as conn:
            after: repository.Key | None = None
            while True:
                keys = await repository.keys_since(conn, since, after, PAGE)
                fresh.extend(key for key in keys if key[1] not in self._seen)
                if len(keys) < PAGE:
                    break
                after = keys[-1]
            events: list[AuditEvent] = []
            if deliver and fresh:
                for start in range(0, len(fresh), FETCH_CHUNK):
                    chunk = [event_id for _, event_id in fresh[start : start + FETCH_CHUNK]]
                    events.extend(await repository.events_by_id(conn, chunk))
        for at, event_id in fresh:
            self._seen[event_id] = at
        self._forget(since)
        self._last_read = started
        if events:
            order = {event_id: index for index, (_, event_id) in enumerate(fresh)}
            events.sort(key=lambda event: order[event.id])
            self._deliver(events)
        return len(events)

    def _forget(self, since: datetime) -> None:
        """Drop the ids no later read can return (at or before ``since``), and the oldest
        beyond :data:`MAX_SEEN`."""
        stale = [event_id for event_id, at in self._seen.items() if at <= since]
        for event_id in stale:
            del self._seen[event_id]
        while len(self._seen) > MAX_SEEN:
            del self._seen[next(iter(self._seen))]
