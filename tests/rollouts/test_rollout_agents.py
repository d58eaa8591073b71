"""Rollouts end to end: the real server and real agents (in process) on loopback.

Seven agents enrol with one key (its tag selects them); one's deploy hook fails; one
is enrolled but offline at the start and gets the model once its agent starts. Each
agent's hook appends the model it ran to a file: deployments are counted at the
agents. A rollback returns each device to its previous model. Both databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.device_service import device_app
from testkit.live import LiveServer, serve_app
from tests.support.agent import agent_options
from tests.support.api import User, signup
from tests.support.audit import actions
from tests.support.models import nef, uploaded
from tests.support.tunnel import API, wait_for
from visiona.agent.runner import Agent
from visiona.kit.settings import Settings
from visiona.rollouts.dependencies import SCHEDULER

RECORD = "import os, sys\nopen(sys.argv[1], 'a').write(os.environ['VISIONA_MODEL_ID'] + '\\n')\n"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short scheduler turns and status writes."""
    return settings.model_copy(
        update={
            "rollout_interval": 0.2,
            "tunnel_status_interval": 0.2,
            "rollout_max_transfers": 2,
        }
    )


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The devices' local HTTP service."""
    async with serve_app(device_app()) as service:
        yield service.port


class Fleet:
    """The in-process agents of one test, each with its own models directory and log."""

    def __init__(self, live: LiveServer, port: int, tmp: Path, key: str) -> None:
        """Agents of ``live`` enrolling with ``key``."""
        self._live, self._port, self._tmp, self.key = live, port, tmp, key
        self._stack = contextlib.AsyncExitStack()
        self.logs: dict[str, Path] = {}

    def options(self, serial: str, *, failing: bool = False) -> Any:
        """The options of the agent of ``serial`` (its hook fails when ``failing``)."""
        base = agent_options(self._live, self._port, self._tmp / f"{serial}.json", self.key)
        log = self._tmp / f"{serial}.log"
        self.logs[serial] = log
        hook_file = self._tmp / "record.py"
        hook_file.write_text(RECORD)
        hook = " ".join(shlex.quote(p) for p in (sys.executable, str(hook_file), str(log)))
        if failing:
            hook = "echo no dongle attached >&2; exit 3"
        return dataclasses.replace(
            base,
            serial_number=serial,
            models_dir=self._tmp / f"models-{serial}",
            deploy_hook=hook,
        )

    async def start(self, serial: str, *, failing: bool = False) -> None:
        """Run the agent of ``serial`` until the test ends."""
        agent = Agent(self.options(serial, failing=failing), stable_after=0.0)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))

        async def halt() -> None:
            stop.set()
            await asyncio.wait_for(task, 30)

        self._stack.push_async_callback(halt)

    def ran(self, serial: str) -> list[str]:
        """The models the agent's hook ran, in order."""
        log = self.logs[serial]
        return log.read_text().split() if log.exists() else []

    async def close(self) -> None:
        """Stop every agent."""
        await self._stack.aclose()


async def _key(http: httpx.AsyncClient, user: User, uses: int) -> str:
    created = await http.post(
        f"{API}/enrollment-keys",
        json={"name": "fleet", "max_uses": uses, "expires_in_hours": 1, "tags": {"site": "f"}},
        headers=user.headers,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


async def _online(http: httpx.AsyncClient, user: User, n: int) -> None:
    async def ready() -> bool:
        items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
        return bool(sum(i["remote_status"] == "online" for i in items) == n)

    await wait_for(ready, limit=120)


async def _rollout(http: httpx.AsyncClient, user: User, rollout_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (
        await http.get(f"{API}/rollouts/{rollout_id}", headers=user.headers)
    ).json()
    return body


async def _until_state(
    http: httpx.AsyncClient, user: User, rollout_id: str, state: str
) -> dict[str, Any]:
    async def reached() -> bool:
        return bool((await _rollout(http, user, rollout_id))["state"] == state)

    await wait_for(reached, limit=120)
    return await _rollout(http, user, rollout_id)


async def _devices(http: httpx.AsyncClient, user: User, rollout_id: str) -> list[dict[str, Any]]:
    response = await http.get(
        f"{API}/rollouts/{rollout_id}/devices", params={"limit": 200}, headers=user.headers
    )
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _create(http: httpx.AsyncClient, user: User, **body: Any) -> str:
    created = await http.post(f"{API}/rollouts", json=body, headers=user.headers)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def test_canary_then_batches_reach_every_agent_once_and_the_offline_one_later(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    fleet = Fleet(live, device_port, tmp_path, await _key(http, user, 8))
    serials = [f"SN-R{i}" for i in range(6)]
    try:
        for serial in serials[:5]:
            await fleet.start(serial)
        await fleet.start(serials[5], failing=True)
        # the seventh PC is enrolled, but its agent is not running yet
        late = await http.post(
            f"{API}/agent/enroll",
            json={"enrollment_key": fleet.key, "serial_number": "SN-LATE", "device_type": "kl720"},
        )
        assert late.status_code == 201, late.text
        await _online(http, user, 6)
        model = await uploaded(http, user, nef(200_000, seed=1), chip="kl720")
        rollout_id = await _create(
            http,
            user,
            model_id=model["id"],
            selector="site=f",
            canary=1,
            batch=3,
            max_failure_percent=100,
        )
        assert (await _rollout(http, user, rollout_id))["devices"] == 7

        scheduler = SCHEDULER.of(live.app)
        peak = 0

        async def only_late_left() -> bool:
            nonlocal peak
            peak = max(peak, scheduler.in_flight)
            assert scheduler.in_flight <= 2  # VISIONA_ROLLOUT_MAX_TRANSFERS
            counts = (await _rollout(http, user, rollout_id))["counts"]
            return bool(
                counts["succeeded"] == 5 and counts["failed"] == 1 and counts["waiting"] == 1
            )

        await wait_for(only_late_left, limit=100)
        assert peak >= 1
        shown = await _rollout(http, user, rollout_id)
        assert shown["state"] == "running"
        assert [b["devices"] for b in shown["batches"]] == [1, 3, 3]
        failed = [d for d in await _devices(http, user, rollout_id) if d["state"] == "failed"]
        assert len(failed) == 1
        assert "hook" in (failed[0]["error"] or "")
        assert "no dongle attached" in (failed[0]["error"] or "")

        await fleet.start("SN-LATE")  # comes online: gets the model
        done = await _until_state(http, user, rollout_id, "completed")
        assert done["counts"]["succeeded"] == 6
        for serial in [*serials[:5], "SN-LATE"]:
            assert fleet.ran(serial) == [model["id"]], serial
        started = await actions(http_app(live), action="rollout.batch_started")
        assert started == ["rollout.batch_started"] * 3
    finally:
        await fleet.close()


async def test_a_failing_agent_pauses_the_rollout_and_a_rollback_restores_the_model(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    fleet = Fleet(live, device_port, tmp_path, await _key(http, user, 3))
    try:
        await fleet.start("SN-A")
        await fleet.start("SN-B")
        await fleet.start("SN-BAD", failing=True)
        await _online(http, user, 3)
        first = await uploaded(http, user, nef(50_000, seed=1), chip="kl720")
        first_id = await _create(
            http, user, model_id=first["id"], selector="site=f", max_failure_percent=100
        )
        await _until_state(http, user, first_id, "completed")
        second = await uploaded(http, user, nef(60_000, seed=2), chip="kl720")
        second_id = await _create(http, user, model_id=second["id"], selector="site=f", batch="50%")
        paused = await _until_state(http, user, second_id, "paused")  # auto-abort
        assert "failed" in paused["reason"]
        assert paused["counts"]["failed"] == 1
        cancelled = await http.post(f"{API}/rollouts/{second_id}/cancel", headers=user.headers)
        assert cancelled.status_code == 200
        rolled = await http.post(f"{API}/rollouts/{second_id}/rollback", headers=user.headers)
        assert rolled.status_code == 201, rolled.text
        back = await _until_state(http, user, rolled.json()["id"], "completed")
        assert back["counts"]["failed"] == 0
        for serial in ("SN-A", "SN-B"):
            ran = fleet.ran(serial)
            assert ran[0] == first["id"], ran
            assert ran[-1] == first["id"], ran  # back on the first model
            assert ran.count(second["id"]) <= 1, ran
        assert await actions(http_app(live), action="rollout.paused") == ["rollout.paused"]
    finally:
        await fleet.close()


def http_app(live: LiveServer) -> Any:
    """The live server's application (for the stored audit events)."""
    return live.app
