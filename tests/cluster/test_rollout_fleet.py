"""A rollout to twenty real ``visiona agent`` processes across two nodes behind nginx.

Each agent is its own process (``python -m visiona agent``), enrolled through the
balancer with one key, so the tunnels spread over both nodes and the scheduler's
transfers cross the node link. Two agents' deploy hooks fail; one PC is enrolled but
its agent is stopped when the rollout starts and gets the model once it runs again.
Every hook appends the model it ran to its own file: deployments are counted at the
agents. Then a second rollout trips the failure threshold (auto-abort) and a rollback
returns every device to the first model. PostgreSQL and Redis (a cluster needs both).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.nodes import Balanced, balanced_nodes
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import User, signup
from tests.support.models import nef, uploaded
from tests.support.tunnel import API, wait_for

AGENTS = 20
FAILING = {"SN-FLEET-18", "SN-FLEET-19"}
LATE = "SN-FLEET-17"
# twenty Python processes starting on a shared 2-core machine: more than the default
pytestmark = pytest.mark.timeout(420)

RECORD = "import os, sys\nopen(sys.argv[1], 'a').write(os.environ['VISIONA_MODEL_ID'] + '\\n')\n"


@pytest.fixture
def cluster(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[Balanced]:
    """Nodes A and B and nginx in front; short scheduler turns, four transfers a node."""
    with balanced_nodes(
        postgres, redis_server, rollout_interval="0.3", rollout_max_transfers="4"
    ) as balanced:
        yield balanced


class Fleet:
    """The agent processes of the test: each with its session, models and hook log."""

    def __init__(self, server: str, port: int, key: str, tmp: Path) -> None:
        """Agents of ``server`` enrolling with ``key``, forwarding to ``port``."""
        self._server, self._port, self._key, self._tmp = server, port, key, tmp
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        record = tmp / "record.py"
        record.write_text(RECORD)
        self._record = record

    def log(self, serial: str) -> Path:
        """The file the agent's hook appends to."""
        return self._tmp / f"{serial}.ran"

    def ran(self, serial: str) -> list[str]:
        """The models the agent's hook ran, in order."""
        log = self.log(serial)
        return log.read_text().split() if log.exists() else []

    def start(self, serial: str) -> None:
        """Start the agent process of ``serial``."""
        if serial in FAILING:
            hook = "echo no dongle attached >&2; exit 3"
        else:
            hook = " ".join(
                shlex.quote(p) for p in (sys.executable, str(self._record), str(self.log(serial)))
            )
        out = (self._tmp / f"{serial}.out").open("ab")
        env = {**os.environ, "VISIONA_AGENT_ENROLL_KEY": self._key}
        env.pop("VISIONA_AGENT_TOKEN", None)
        self._procs[serial] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "visiona",
                "agent",
                "--server",
                self._server,
                "--forward",
                f"127.0.0.1:{self._port}",
                "--session-file",
                str(self._tmp / f"{serial}.session.json"),
                "--serial",
                serial,
                "--type",
                "kl720",
                "--name",
                serial,
                "--models-dir",
                str(self._tmp / f"models-{serial}"),
                "--deploy-hook",
                hook,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        out.close()

    def stop(self, serial: str) -> None:
        """Stop the agent of ``serial`` (SIGTERM: it closes its tunnel and exits)."""
        proc = self._procs.pop(serial)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop every agent still running."""
        for serial in list(self._procs):
            with contextlib.suppress(ProcessLookupError):
                self.stop(serial)


async def _online(http: httpx.AsyncClient, user: User, n: int) -> None:
    async def ready() -> bool:
        items = (
            await http.get(f"{API}/devices", params={"limit": 100}, headers=user.headers)
        ).json()["items"]
        return bool(sum(i["remote_status"] == "online" for i in items) == n)

    await wait_for(ready, limit=180)


async def _rollout(http: httpx.AsyncClient, user: User, rollout_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (
        await http.get(f"{API}/rollouts/{rollout_id}", headers=user.headers)
    ).json()
    return body


async def _until(
    http: httpx.AsyncClient, user: User, rollout_id: str, done: Any, limit: float = 180
) -> dict[str, Any]:
    async def reached() -> bool:
        return bool(done(await _rollout(http, user, rollout_id)))

    await wait_for(reached, limit=limit)
    return await _rollout(http, user, rollout_id)


async def _create(http: httpx.AsyncClient, user: User, **body: Any) -> str:
    created = await http.post(f"{API}/rollouts", json=body, headers=user.headers)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def test_twenty_agent_processes_on_two_nodes_canary_batches_abort_and_rollback(
    cluster: Balanced, device_port: int, tmp_path: Path
) -> None:
    serials = [f"SN-FLEET-{i:02d}" if i < 10 else f"SN-FLEET-{i}" for i in range(AGENTS)]
    async with httpx.AsyncClient(base_url=cluster.lb.url, timeout=30) as via_lb:
        user = await signup(via_lb)
        created = await via_lb.post(
            f"{API}/enrollment-keys",
            json={
                "name": "fleet",
                "max_uses": AGENTS,
                "expires_in_hours": 1,
                "tags": {"site": "f"},
            },
            headers=user.headers,
        )
        assert created.status_code == 201, created.text
        fleet = Fleet(cluster.lb.url, device_port, created.json()["key"], tmp_path)
        try:
            for serial in serials:  # the failing ones last: never in the canary
                if serial not in FAILING:
                    fleet.start(serial)
            await _online(via_lb, user, AGENTS - len(FAILING))
            for serial in sorted(FAILING):
                fleet.start(serial)
            await _online(via_lb, user, AGENTS)
            owners = set()
            items = (
                await via_lb.get(f"{API}/devices", params={"limit": 100}, headers=user.headers)
            ).json()["items"]
            for item in items:
                owners.add(await cluster.owner(item["id"]))
            assert owners == {"node-a", "node-b"}  # the tunnels spread over both nodes

            fleet.stop(LATE)  # enrolled, offline when the rollout starts
            await _online(via_lb, user, AGENTS - 1)
            first = await uploaded(via_lb, user, nef(300_000, seed=7), chip="kl720")
            first_id = await _create(
                via_lb,
                user,
                model_id=first["id"],
                selector="site=f",
                canary=2,
                batch="25%",
                max_failure_percent=50,
            )

            def only_late_left(body: dict[str, Any]) -> bool:
                counts = body["counts"]
                return bool(counts["succeeded"] + counts["failed"] == AGENTS - 1)

            shown = await _until(via_lb, user, first_id, only_late_left)
            assert shown["counts"]["failed"] == len(FAILING)
            assert shown["counts"]["waiting"] + shown["counts"]["queued"] == 1
            assert shown["batches"][0]["devices"] == 2  # the canary first
            fleet.start(LATE)  # back online: it gets the model now
            done = await _until(via_lb, user, first_id, lambda b: b["state"] == "completed")
            assert done["counts"]["succeeded"] == AGENTS - len(FAILING)
            for serial in serials:
                expected = [] if serial in FAILING else [first["id"]]
                assert fleet.ran(serial) == expected, serial

            second = await uploaded(via_lb, user, nef(200_000, seed=8), chip="kl720")
            second_id = await _create(
                via_lb,
                user,
                model_id=second["id"],
                selector="site=f",
                canary=2,
                batch="50%",
                max_failure_percent=5,
            )
            paused = await _until(via_lb, user, second_id, lambda b: b["state"] == "paused")
            assert "failed" in paused["reason"]  # auto-abort: over 5 % failed
            assert paused["counts"]["failed"] >= 1
            cancelled = await via_lb.post(
                f"{API}/rollouts/{second_id}/cancel", headers=user.headers
            )
            assert cancelled.status_code == 200
            rolled = await via_lb.post(f"{API}/rollouts/{second_id}/rollback", headers=user.headers)
            assert rolled.status_code == 201, rolled.text
            back = await _until(
                via_lb, user, rolled.json()["id"], lambda b: b["state"] == "completed"
            )
            assert back["counts"]["failed"] == 0
            for serial in serials:
                if serial in FAILING:
                    continue
                ran = fleet.ran(serial)
                assert ran[0] == first["id"], (serial, ran)
                assert ran[-1] == first["id"], (serial, ran)  # back on the first model
                assert ran.count(second["id"]) <= 1, (serial, ran)
        finally:
            fleet.close()
