"""The outbox as a queue: claim due deliveries under a lease, record their attempts.

Rows are written by :mod:`visiona.audit.outbox` in the transaction of each change.
Every function here runs on the caller's connection and never commits: the
dispatcher opens one short transaction per claim and one per recorded attempt.

*Claim* (:func:`claim`). A row is claimable when it is its endpoint's head of line —
the endpoint's oldest ``pending`` row, so an endpoint receives its events in order and
later rows wait while the head is retried — its endpoint is enabled, it is due
(``next_attempt_at <= now``) and its lease is free or expired. Claiming writes
``lease_owner`` (the node's id plus a nonce of this claim) and ``lease_until`` (now +
``VISIONA_WEBHOOK_LEASE_SECONDS``, longer than an attempt may take). On PostgreSQL the
candidates are read ``FOR UPDATE SKIP LOCKED``: two nodes claiming at once never take
the same row, and neither waits for the other; on SQLite the transaction holds the
one write lock (``BEGIN IMMEDIATE``), which serialises claims.

*Record* (:func:`record`). An attempt's outcome is written only while the lease is
still the one this claim took (compare-and-set on ``lease_owner``): a node that took
longer than its lease, lost it and saw the row claimed again writes nothing (the
row was delivered again: at least once). Success: ``delivered``, ``delivered_at``, and
the endpoint's ``failing_since`` cleared. Failure: ``attempts`` + 1 and the next
attempt after the schedule's next delay, the endpoint's ``failing_since`` set if it
was not; when the schedule is exhausted the row is ``failed`` and the endpoint is
disabled (``enabled`` false, ``disabled_reason``, ``disabled_at``) with a
``webhook.disabled`` audit event in the same transaction (the endpoint is disabled
first, so the event is not queued for itself).

*Retry schedule* (``VISIONA_WEBHOOK_RETRY_SCHEDULE``, Standard Webhooks / Svix style):
the delays before each attempt, the first counted from the event and each later one
from the previous attempt: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h — eight
attempts over about 27.6 hours. An endpoint's later rows wait behind a head being
retried; when the head fails for good and the endpoint is disabled, they stay
``pending`` and are delivered, in order, once it is enabled again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import false, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.service import SYSTEM
from visiona.kit.schema import webhook_deliveries, webhook_endpoints
from visiona.webhooks.sender import Attempt

_LOGGER = logging.getLogger(__name__)

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
#: ``disabled_reason`` of an endpoint the server disabled (every attempt failed).
EXHAUSTED_REASON = "every attempt of a delivery's retry schedule failed"

_d = webhook_deliveries
_e = webhook_endpoints
_earlier = webhook_deliveries.alias("earlier")


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this node holds: what an attempt needs, and the lease to record under."""

    seq: int
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    attempts: int
    url: str
    secret: str
    lease_owner: str

    def __repr__(self) -> str:
        """No URL (its query may carry a token) and never the secret."""
        return f"Claimed(seq={self.seq}, endpoint={self.endpoint_id}, event={self.event_id})"


def _candidates(
    now: datetime,
    limit: int,
    *,
    exclude: Sequence[uuid.UUID],
    only: uuid.UUID | None = None,
) -> Any:
    """Each enabled endpoint's head of line (its oldest pending row, found through the
    ``(endpoint_id, state, seq)`` index: one probe per endpoint, however long the queue
    behind a failing head), when it is due and its lease free or expired."""
    head = (
        select(_earlier.c.seq)
        .where(_earlier.c.endpoint_id == _e.c.id, _earlier.c.state == PENDING)
        .order_by(_earlier.c.seq)
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(_d.c.seq)
        .select_from(_e.join(_d, _d.c.seq == head))
        .where(
            _e.c.enabled,
            _d.c.state == PENDING,
            _d.c.next_attempt_at <= now,
            or_(_d.c.lease_until.is_(None), _d.c.lease_until <= now),
        )
        .order_by(_d.c.next_attempt_at, _d.c.seq)
        .limit(limit)
    )
    if exclude:
        query = query.where(_e.c.id.not_in(list(exclude)))
    if only is not None:
        query = query.where(_e.c.id == only)
    return query


async def any_due(conn: AsyncConnection, now: datetime) -> bool:
    """Whether a delivery is claimable now (a plain read: no lock, no write)."""
    found = await conn.execute(_candidates(now, 1, exclude=()))
    return found.first() is not None


async def claim(
    conn: AsyncConnection,
    *,
    owner: str,
    now: datetime,
    lease: float,
    limit: int,
    busy: Sequence[uuid.UUID] = (),
    only: uuid.UUID | None = None,
) -> list[Claimed]:
    """Claim up to ``limit`` due heads of line (none of the endpoints ``busy``: this
    node's attempts in flight; only endpoint ``only`` if given) for ``owner`` until
    ``now + lease``; oldest due first."""
    if limit <= 0:
        return []
    candidates = _candidates(now, limit, exclude=busy, only=only)
    if conn.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True, of=_d)
    seqs = list((await conn.execute(candidates)).scalars())
    if not seqs:
        return []
    await conn.execute(
        update(_d)
        .where(_d.c.seq.in_(seqs))
        .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease))
    )
    rows = await conn.execute(
        select(
            _d.c.seq,
            _d.c.endpoint_id,
            _d.c.event_id,
            _d.c.event_type,
            _d.c.payload,
            _d.c.attempts,
            _e.c.url,
            _e.c.secret,
        )
        .select_from(_d.join(_e, _e.c.id == _d.c.endpoint_id))
        .where(_d.c.seq.in_(seqs))
        .order_by(_d.c.next_attempt_at, _d.c.seq)
    )
    return [
        Claimed(
            seq=row.seq,
            endpoint_id=row.endpoint_id,
            event_id=row.event_id,
            event_type=row.event_type,
            payload=dict(row.payload),
            attempts=int(row.attempts),
            url=row.url,
            secret=row.secret,
            lease_owner=owner,
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :func:`record` wrote."""

    #: False: the lease was lost meanwhile (nothing written)
    recorded: bool
    #: the delivery's state after the attempt
    state: str | None = None
    #: the endpoint was disabled by this attempt
    disabled: bool = False


async def record(
    conn: AsyncConnection,
    claimed: Claimed,
    attempt: Attempt,
    *,
    schedule: Sequence[float],
    now: datetime,
) -> Outcome:
    """Write ``attempt``'s outcome for ``claimed`` while its lease is still ours."""
    attempts = claimed.attempts + 1
    log = {
        "attempts": attempts,
        "last_attempt_at": attempt.attempted_at,
        "last_status": attempt.status,
        "last_latency_ms": attempt.latency_ms,
        "last_response": attempt.response,
        "last_error": attempt.error,
        "lease_owner": None,
        "lease_until": None,
    }
    if attempt.ok:
        state, values = DELIVERED, {"state": DELIVERED, "delivered_at": now}
    elif attempts < len(schedule):
        delay = timedelta(seconds=schedule[attempts])
        state, values = PENDING, {"next_attempt_at": now + delay}
    else:
        state, values = FAILED, {"state": FAILED}
    written = await conn.execute(
        update(_d)
        .where(
            _d.c.seq == claimed.seq,
            _d.c.lease_owner == claimed.lease_owner,
            _d.c.state == PENDING,
        )
        .values(**log, **values)
    )
    if written.rowcount != 1:
        _LOGGER.info(
            "webhooks: delivery %s of event %s: lease lost meanwhile, outcome not recorded",
            claimed.seq,
            claimed.event_id,
        )
        return Outcome(recorded=False)
    if attempt.ok:
        await conn.execute(
            update(_e)
            .where(_e.c.id == claimed.endpoint_id, _e.c.failing_since.is_not(None))
            .values(failing_since=None)
        )
        return Outcome(recorded=True, state=state)
    await conn.execute(
        update(_e)
        .where(_e.c.id == claimed.endpoint_id, _e.c.failing_since.is_(None))
        .values(failing_since=attempt.attempted_at)
    )
    if state != FAILED:
        return Outcome(recorded=True, state=state)
    return Outcome(recorded=True, state=state, disabled=await _disable(conn, claimed, now))


async def _disable(conn: AsyncConnection, claimed: Claimed, now: datetime) -> bool:
    """Disable the endpoint of ``claimed`` and audit it; False when it already was."""
    disabled = await conn.execute(
        update(_e)
        .where(_e.c.id == claimed.endpoint_id, _e.c.enabled)
        .values(
            enabled=false(),
            disabled_reason=EXHAUSTED_REASON,
            disabled_at=now,
            updated_at=now,
        )
        .returning(_e.c.org_id, _e.c.failing_since)
    )
    row = disabled.first()
    if row is None:
        return False
    failing_since: datetime | None = row.failing_since
    await audit.record(
        conn,
        "webhook.disabled",
        actor=SYSTEM,
        org_id=row.org_id,
        target_id=claimed.endpoint_id,
        detail={
            "reason": EXHAUSTED_REASON,
            "failing_since": None if failing_since is None else failing_since.isoformat(),
        },
    )
    _LOGGER.warning(
        "webhooks: endpoint %s disabled: %s (failing since %s)",
        claimed.endpoint_id,
        EXHAUSTED_REASON,
        failing_since,
    )
    return True
