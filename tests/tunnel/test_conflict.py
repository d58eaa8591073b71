"""Two agents connected as one device: the flapping is detected, recorded once per
episode (not once per flap) with its cause and fix, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx

from testkit.live import LiveServer
from tests.support.api import signup
from tests.support.audit import actions, stored_events
from tests.support.tunnel import connect_agent, paired_agent_token, wait_for
from visiona.tunnel import conflict
from visiona.tunnel.conflict import ConflictDetector
from visiona.tunnel.dependencies import HUB

FLAPS = 8


def test_more_than_three_supersessions_a_minute_start_one_episode_which_ends_when_quiet() -> None:
    now = [0.0]
    detector = ConflictDetector(limit=3, window=60.0, clock=lambda: now[0])
    device = uuid.uuid4()
    started = []
    for _ in range(10):
        now[0] += 2.0
        started.append(detector.superseded(device))
    assert started == [False, False, False, True] + [False] * 6
    assert detector.in_conflict(device)
    now[0] += 61.0
    assert not detector.in_conflict(device)
    # three supersessions spread over more than a minute are no conflict
    for _ in range(3):
        now[0] += 25.0
        assert not detector.superseded(device)
    assert not detector.in_conflict(device)


async def test_two_agents_flapping_are_one_conflict_event_not_one_per_flap(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    hub = HUB.of(live.app)
    device = uuid.UUID(device_id)
    async with contextlib.AsyncExitStack() as stack:
        agents = []
        for _ in range(FLAPS):  # each new tunnel knocks the previous one off (4409)
            agents.append(await stack.enter_async_context(connect_agent(live, token)))
            if len(agents) > 1:
                await asyncio.wait_for(agents[-2].closed.wait(), 10)
                assert agents[-2].close_code == 4409
        await wait_for(lambda: _is(hub.conflicts.in_conflict(device)))
        assert agents[-1].close_code is None
    await wait_for(lambda: _is(hub.get(device) is None))
    assert hub.conflicts.in_conflict(device)

    async def conflict_written() -> bool:  # the status writer writes in batches
        found = await stored_events(live.app, action="tunnel.conflict", target_id=device_id)
        return len(found) == 1

    await wait_for(conflict_written)
    [event] = await stored_events(live.app, action="tunnel.conflict", target_id=device_id)
    assert event.detail == {"reason": conflict.CAUSE, "fix": conflict.FIX}
    seen = await actions(live.app, target_id=device_id)
    # the flaps before the episode were recorded; during it, nothing per flap
    assert seen.count("tunnel.superseded") <= 3
    assert seen.count("tunnel.conflict") == 1
    # the device's history, as the user reads it, says it once, with cause and fix
    history = await http.get(f"/api/v1/devices/{device_id}/audit-events", headers=user.headers)
    texts = [item["action"] for item in history.json()["items"]]
    assert texts.count("tunnel.conflict") == 1


async def _is(value: bool) -> bool:
    return value
