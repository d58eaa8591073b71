"""The hub and the tail without HTTP: out-of-order commits, de-duplication, slow
subscribers, shutdown. The tail reads a real database (both backends)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from fastapi import FastAPI

from visiona.audit import service as audit
from visiona.audit.repository import AuditEvent
from visiona.events.hub import EventHub, Subscription
from visiona.events.service import TypeFilter
from visiona.events.tail import Tail
from visiona.kit.clock import utcnow
from visiona.kit.deps import RUNTIME
from visiona.kit.errors import ValidationFailedError


def _event(org_id: uuid.UUID, action: str = "device.renamed") -> AuditEvent:
    return AuditEvent(
        id=uuid.uuid4(),
        occurred_at=utcnow(),
        owner_id=None,
        org_id=org_id,
        actor_type="system",
        actor_id=None,
        action=action,
        target_type="device",
        target_id=None,
        device_id=None,
        client_addr=None,
        request_id=None,
        detail={},
    )


async def _record(app: FastAPI, org_id: uuid.UUID, *, ago: float = 0.0) -> uuid.UUID:
    """One committed event of ``org_id`` that happened ``ago`` seconds ago."""
    values = audit.event_values("device.renamed", actor=audit.SYSTEM, org_id=org_id, target_id=None)
    values["occurred_at"] = utcnow() - timedelta(seconds=ago)
    async with RUNTIME.of(app).db.transaction() as conn:
        await audit.record_prepared(conn, [values])
    event_id: uuid.UUID = values["id"]
    return event_id


async def test_the_tail_delivers_late_commits_within_the_lookback_once_each(app: FastAPI) -> None:
    got: list[AuditEvent] = []
    tail = Tail(RUNTIME.of(app).db, lookback=5.0, deliver=got.extend)
    org = uuid.uuid4()
    before = await _record(app, org)
    await tail.prime()  # what was committed before is not delivered
    on_time = await _record(app, org)
    late = await _record(app, org, ago=3.0)  # committed now, happened 3 s ago
    too_late = await _record(app, org, ago=30.0)  # beyond the lookback: trail only
    assert await tail.poll() == 2
    assert [e.id for e in got] == [late, on_time]  # oldest first
    assert await tail.poll() == 0  # nothing twice
    assert before not in {e.id for e in got}
    assert too_late not in {e.id for e in got}


async def test_a_slow_subscriber_is_closed_and_the_others_go_on(app: FastAPI) -> None:
    hub = EventHub(RUNTIME.of(app).db, poll_interval=60, lookback=1, metrics=None)
    org = uuid.uuid4()
    slow, fast = await hub.subscribe(org), await hub.subscribe(org)
    try:
        for _ in range(1000):
            hub.deliver([_event(org)])  # what the tail does
            await fast.next(0)
        hub.deliver([_event(org)])
        assert slow.closed == "slow"
        assert await slow.next(0) is None
        assert fast.closed is None
        assert (await fast.next(0)) is not None
        assert hub.open() == 1
    finally:
        await hub.close()
    assert fast.closed == "shutdown"
    assert not hub.tailing
    with pytest.raises(Exception, match="stopping"):
        await hub.subscribe(org)


async def test_a_subscription_waits_for_its_next_event() -> None:
    subscription = Subscription(uuid.uuid4(), capacity=2)
    assert await subscription.next(0.01) is None
    assert subscription.closed is None
    event = _event(subscription.org_id)
    asyncio.get_running_loop().call_later(0.05, subscription.offer, event)
    assert await subscription.next(5) is event


def test_type_filters_take_actions_families_and_refuse_the_rest() -> None:
    assert TypeFilter.parse([]).matches("anything.at_all")
    assert TypeFilter.parse(["*"]).matches("device.renamed")
    tunnel = TypeFilter.parse(["tunnel.*", "device.renamed"])
    assert tunnel.matches("tunnel.connected")
    assert tunnel.matches("device.renamed")
    assert not tunnel.matches("device.paired")
    assert TypeFilter.parse(["rollout"]).matches("rollout.batch_started")
    for bad in ("nope", "device.nope", "tunnel.*.*", "tun*"):
        with pytest.raises(ValidationFailedError):
            TypeFilter.parse([bad])
