"""The webhook dispatcher: one background task per node that empties the outbox.

Each turn (every ``VISIONA_WEBHOOK_POLL_INTERVAL`` seconds, or at once when an attempt
of this node ends — the next row of its endpoint may be due — or :meth:`Dispatcher.wake`
is called):

1. a plain read asks whether any delivery is claimable (an idle server takes no
   write lock);
2. one short transaction claims up to the free slots' worth of due heads of line
   under this node's lease (:func:`visiona.webhooks.queue.claim`);
3. each claimed delivery is attempted in its own task (at most
   ``VISIONA_WEBHOOK_CONCURRENCY`` at once, one per endpoint: an endpoint's events go
   in order) and its outcome written in its own short transaction, only while the
   lease is still this claim's (:func:`visiona.webhooks.queue.record`); after a
   success, that transaction also claims the endpoint's next due row, which the same
   task attempts next (up to :data:`CHAIN` rows), so a backlog drains without waiting
   for a turn between two events.

Every node of a cluster may run one on the same database: the lease (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL) gives each attempt to one node. Delivery is at least
once, never lost: a node that dies mid-attempt leaves its rows leased until
``VISIONA_WEBHOOK_LEASE_SECONDS`` have passed, then any node claims them again;
:meth:`Dispatcher.stop` lets attempts in flight finish for a short grace, cancels the
rest and gives their leases back (their rows are attempted again, by whichever node).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from visiona.kit.clock import utcnow
from visiona.kit.errors import AppError
from visiona.kit.runtime import Provided
from visiona.kit.schema import webhook_deliveries
from visiona.webhooks import queue
from visiona.webhooks.sender import Sender

if TYPE_CHECKING:
    from visiona.kit.database import Database
    from visiona.kit.metrics import Metrics
    from visiona.kit.settings import Settings
    from visiona.webhooks.queue import Claimed

_LOGGER = logging.getLogger(__name__)

#: The node's dispatcher, for routes that want a delivery attempted now (``wake``).
DISPATCHER: Provided[Dispatcher] = Provided("webhook_dispatcher")
#: Seconds :meth:`Dispatcher.stop` lets attempts in flight finish before cancelling them.
STOP_GRACE = 2.0
#: Rows of one endpoint one task delivers in a row before giving its slot back (so a
#: long backlog does not keep other endpoints waiting for a slot).
CHAIN = 100


def encode(payload: dict[str, Any]) -> bytes:
    """A delivery's body: compact JSON, UTF-8 — the bytes signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class Dispatcher:
    """Delivers the outbox's due rows from this node (started by the composition root)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        node_id: str,
        metrics: Metrics | None = None,
        sender: Sender | None = None,
    ) -> None:
        """Deliver ``db``'s outbox as ``node_id`` with ``settings``' webhook knobs."""
        self._db = db
        self.node_id = node_id
        #: the retry schedule's delays (seconds)
        self.schedule = settings.webhook_retry_delays
        self._lease = settings.webhook_lease_seconds
        self._poll = settings.webhook_poll_interval
        self._concurrency = settings.webhook_concurrency
        self._sender = sender or Sender(
            connect_timeout=settings.webhook_connect_timeout,
            timeout=settings.webhook_timeout,
            allow_private=settings.webhook_allow_private,
        )
        self._inflight: dict[int, tuple[Claimed, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        #: deliveries answered 2xx, failed attempts, endpoints disabled (this process)
        self.sent = 0
        self.failed = 0
        self.disabled = 0
        if metrics is not None:
            self._register(metrics)

    def _register(self, metrics: Metrics) -> None:
        metrics.counter(
            "visiona_webhook_deliveries_sent",
            "Webhook deliveries a receiver answered 2xx (this node).",
            lambda: self.sent,
        )
        metrics.counter(
            "visiona_webhook_attempts_failed",
            "Webhook attempts that failed: another status, timeout, refused (this node).",
            lambda: self.failed,
        )
        metrics.counter(
            "visiona_webhook_endpoints_disabled",
            "Webhook endpoints this node disabled after a delivery's last attempt failed.",
            lambda: self.disabled,
        )
        metrics.gauge(
            "visiona_webhook_attempts_in_flight",
            "Webhook attempts this node runs now.",
            lambda: len(self._inflight),
        )

    @property
    def in_flight(self) -> int:
        """Attempts this node runs now."""
        return len(self._inflight)

    def start(self) -> None:
        """Start the turns."""
        self._loop = asyncio.get_running_loop().create_task(self._run(), name="webhooks")

    def wake(self) -> None:
        """Look for due deliveries now (e.g. one was just queued on this node)."""
        self._wake.set()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop claiming; let attempts in flight finish within ``grace`` seconds, cancel
        the others and give their leases back; close the HTTP clients."""
        self._stopping = True  # no attempt in flight goes on to its endpoint's next row
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop
            self._loop = None
        tasks = {task for _, task in self._inflight.values()}
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=grace)
            # what the late tasks hold now (read before cancelling: they forget it then)
            held = [claimed for claimed, task in self._inflight.values() if task in late]
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._release(held)
        await self._sender.aclose()

    async def _release(self, claims: list[Claimed]) -> None:
        """Give back the leases of attempts cancelled at stop (attempted again later)."""
        if not claims:
            return
        try:
            # unit of work: one statement per cancelled attempt, each under its own lease
            async with self._db.transaction() as conn:
                for claimed in claims:
                    await conn.execute(
                        update(webhook_deliveries)
                        .where(
                            webhook_deliveries.c.seq == claimed.seq,
                            webhook_deliveries.c.lease_owner == claimed.lease_owner,
                        )
                        .values(lease_owner=None, lease_until=None)
                    )
        except (AppError, OSError) as err:  # their leases expire by themselves
            _LOGGER.warning("webhooks: leases not given back at stop: %s", type(err).__name__)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.turn()
            except asyncio.CancelledError:
                raise
            except AppError as err:  # the database is away: try again next turn
                _LOGGER.warning("webhooks: dispatcher turn failed: %s", err.code)
            except Exception:
                _LOGGER.exception("webhooks: dispatcher turn failed; next turn")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)

    async def turn(self) -> int:
        """Claim what is due within the free slots and start its attempts; how many."""
        free = self._concurrency - len(self._inflight)
        if free <= 0:
            return 0
        now = utcnow()
        # unit of work: a read without a lock (most turns of an idle server end here)
        async with self._db.reading() as conn:
            if not await queue.any_due(conn, now):
                return 0
        owner = f"{self.node_id}/{uuid.uuid4().hex[:8]}"
        busy = [claimed.endpoint_id for claimed, _ in self._inflight.values()]
        # unit of work: the claim (short: no network inside)
        async with self._db.transaction() as conn:
            claims = await queue.claim(
                conn, owner=owner, now=now, lease=self._lease, limit=free, busy=busy
            )
        for claimed in claims:
            task = asyncio.get_running_loop().create_task(self._deliver(claimed))
            self._inflight[claimed.seq] = (claimed, task)
        return len(claims)

    async def _deliver(self, first: Claimed) -> None:
        """Attempt ``first``; after a success, go on with its endpoint's next due row
        (claimed in the transaction that records the success), up to :data:`CHAIN`
        rows, so a backlog drains without a poll between two events."""
        claimed: Claimed | None = first
        task = asyncio.current_task()
        done = 0
        try:
            while claimed is not None:
                done += 1
                following = await self._attempt(claimed, go_on=done < CHAIN)
                self._inflight.pop(claimed.seq, None)
                if following is not None and task is not None:
                    self._inflight[following.seq] = (following, task)
                claimed = following
        finally:
            if claimed is not None:
                self._inflight.pop(claimed.seq, None)
            self._wake.set()

    async def _attempt(self, claimed: Claimed, *, go_on: bool) -> Claimed | None:
        """One attempt of ``claimed`` and its outcome; with ``go_on``, the endpoint's next
        row, claimed, when the attempt succeeded and one is due."""
        try:
            attempt = await self._sender.attempt(
                url=claimed.url,
                secret=claimed.secret,
                event_id=str(claimed.event_id),
                body=encode(claimed.payload),
            )
            # unit of work: the attempt's outcome, under the lease (and the next row's claim)
            async with self._db.transaction() as conn:
                now = utcnow()
                outcome = await queue.record(
                    conn, claimed, attempt, schedule=self.schedule, now=now
                )
                following = (
                    await queue.claim(
                        conn,
                        owner=claimed.lease_owner,
                        now=now,
                        lease=self._lease,
                        limit=1,
                        only=claimed.endpoint_id,
                    )
                    if go_on and outcome.recorded and attempt.ok and not self._stopping
                    else []
                )
        except asyncio.CancelledError:
            raise
        except AppError as err:  # not recorded: the lease expires, the row is tried again
            _LOGGER.warning(
                "webhooks: outcome of event %s not recorded: %s", claimed.event_id, err.code
            )
            return None
        except Exception:
            _LOGGER.exception("webhooks: delivery of event %s failed", claimed.event_id)
            return None
        if attempt.ok:
            self.sent += 1
        else:
            self.failed += 1
            _LOGGER.info(
                "webhooks: attempt %d of event %s to endpoint %s failed: %s",
                claimed.attempts + 1,
                claimed.event_id,
                claimed.endpoint_id,
                attempt.error,
            )
        self.disabled += int(outcome.disabled)
        return following[0] if following else None
