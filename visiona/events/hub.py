"""The node's event hub: the subscribers of ``GET /events`` and the tail that feeds them.

The tail (:mod:`visiona.events.tail`) runs only while at least one stream is open on
this node: the first subscriber starts it (and waits until it has primed, so nothing
committed after its subscription is missed), it stops by itself once the last one has
left. An idle node, and a test that opens no stream, reads nothing.

Each subscriber has a bounded queue of its organisation's events. A subscriber too
slow to keep up (its queue full) is closed, never waited for: the tail and the other
streams go on, and its client resumes with ``Last-Event-ID``. :meth:`EventHub.close`
(the server stopping) ends every stream at once, so open streams do not hold the
shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

from visiona.events.tail import Tail
from visiona.kit.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from visiona.audit.repository import AuditEvent
    from visiona.kit.database import Database
    from visiona.kit.metrics import Metrics

_LOGGER = logging.getLogger(__name__)
#: Events one subscriber may have waiting before it is closed as too slow.
QUEUE_SIZE = 1000
_MAX_BACKOFF = 5.0


class Subscription:
    """One open stream's queue of its organisation's events."""

    def __init__(self, org_id: uuid.UUID, capacity: int = QUEUE_SIZE) -> None:
        """Events of ``org_id``, at most ``capacity`` waiting."""
        self.org_id = org_id
        self._capacity = capacity
        self._queue: collections.deque[AuditEvent] = collections.deque()
        self._ready = asyncio.Event()
        #: Why it was closed (None: open): ``slow`` or ``shutdown``.
        self.closed: str | None = None

    def offer(self, event: AuditEvent) -> bool:
        """Queue ``event``; False (and nothing queued) when the queue is full."""
        if self.closed is not None:
            return True
        if len(self._queue) >= self._capacity:
            return False
        self._queue.append(event)
        self._ready.set()
        return True

    def close(self, reason: str) -> None:
        """End the stream (what is queued is dropped: the client resumes)."""
        if self.closed is None:
            self.closed = reason
            self._queue.clear()
            self._ready.set()

    async def next(self, wait: float) -> AuditEvent | None:
        """The next event; None after ``wait`` seconds without one or once closed
        (:attr:`closed` tells which)."""
        if not self._queue and self.closed is None:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._ready.wait()
        if self.closed is not None or not self._queue:
            return None
        return self._queue.popleft()


class EventHub:
    """The subscribers of this node and their tail (see the module doc)."""

    def __init__(
        self, db: Database, *, poll_interval: float, lookback: float, metrics: Metrics | None
    ) -> None:
        """Serve streams from ``db``'s audit trail, read every ``poll_interval`` seconds
        with ``lookback`` seconds of overlap."""
        self._db = db
        self._interval = poll_interval
        self._lookback = lookback
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._primed: asyncio.Future[None] | None = None
        self._closed = False
        self.slow_closed = 0
        if metrics is not None:
            metrics.gauge(
                "visiona_event_streams", "Open event streams (GET /events) on this node.", self.open
            )

    def open(self) -> int:
        """Streams open on this node."""
        return len(self._subscribers)

    @property
    def tailing(self) -> bool:
        """Whether the tail runs (only while a stream is open)."""
        return self._task is not None and not self._task.done()

    async def subscribe(self, org_id: uuid.UUID) -> Subscription:
        """A new subscription to ``org_id``'s events, live from the moment this returns
        (the tail has read the trail once since). 503 when the server is stopping or the
        tail's first read failed."""
        if self._closed:
            raise ServiceUnavailableError("The server is stopping.")
        subscription = Subscription(org_id)
        self._subscribers.add(subscription)
        try:
            if self._task is None or self._task.done():
                self._primed = asyncio.get_running_loop().create_future()
                self._task = asyncio.create_task(self._run(self._primed), name="event-tail")
            assert self._primed is not None  # noqa: S101 - set with the task
            await asyncio.shield(self._primed)
        except BaseException:
            self.unsubscribe(subscription)
            raise
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget ``subscription`` (the tail stops after its next read when none is left)."""
        self._subscribers.discard(subscription)

    async def close(self) -> None:
        """End every stream and stop the tail (the server stopping)."""
        self._closed = True
        for subscription in list(self._subscribers):
            subscription.close("shutdown")
        self._subscribers.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def deliver(self, events: list[AuditEvent]) -> None:
        """Hand ``events`` (one read of the tail, oldest first) to their organisation's
        subscribers; a full queue closes its subscriber (``slow``)."""
        for subscription in list(self._subscribers):
            for event in events:
                if event.org_id != subscription.org_id:
                    continue
                if not subscription.offer(event):
                    _LOGGER.info("event stream of org %s too slow: closed", subscription.org_id)
                    self.slow_closed += 1
                    subscription.close("slow")
                    self._subscribers.discard(subscription)
                    break

    async def _run(self, primed: asyncio.Future[None]) -> None:
        tail = Tail(self._db, lookback=self._lookback, deliver=self.deliver)
        try:
            await tail.prime()
        except Exception as err:  # noqa: BLE001 - the subscribers get a 503
            _LOGGER.warning("event tail could not read the audit trail: %s", type(err).__name__)
            primed.set_exception(ServiceUnavailableError("The event stream is unavailable."))
            primed.exception()  # retrieved: the subscribers waiting on it get it too
            return
        primed.set_result(None)
        backoff = self._interval
        while self._subscribers:
            await asyncio.sleep(backoff)
            if not self._subscribers:
                break
            try:
                await tail.poll()
                backoff = self._interval
            except Exception as err:  # noqa: BLE001 - logged, retried with backoff
                _LOGGER.warning("event tail read failed: %s", type(err).__name__)
                backoff = min(_MAX_BACKOFF, backoff * 2)
        _LOGGER.debug("event tail stopped: no stream open")
