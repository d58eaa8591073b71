"""The real agent keeps the model of its last successful deployment and reports it.

The record lives next to the session file (``<stem>.model.json``), survives a restart,
and the status report puts the device's ``current_model`` right even when the server
missed a deployment's outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update
from typer.testing import CliRunner

from testkit.live import LiveServer
from tests.support.agent import agent_options, running
from tests.support.api import User, signup
from tests.support.deployments import deploy
from tests.support.devices import pairing_token
from tests.support.models import nef, uploaded
from tests.support.tunnel import API, wait_for
from visiona.agent.credentials import model_path
from visiona.agent.runner import Agent, AgentOptions
from visiona.cli import app as cli
from visiona.kit.runtime import Runtime
from visiona.kit.schema import devices


async def _device(http: httpx.AsyncClient, user: User) -> dict[str, Any]:
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert len(items) == 1
    device: dict[str, Any] = items[0]
    return device


def _with(options: AgentOptions, **changes: Any) -> AgentOptions:
    return options.__class__(**{**options.__dict__, **changes})


async def test_the_agent_keeps_its_model_across_restarts_and_repairs_a_missed_outcome(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    session = tmp_path / "s.json"
    options = _with(agent_options(live, device_port, session, token), models_dir=tmp_path / "m")
    content = nef(60_000, seed=5)
    model = await uploaded(http, user, content, chip="kl720")
    expected = {"id": str(model["id"]), "sha256": hashlib.sha256(content).hexdigest()}

    async with running(Agent(options)):
        await wait_for(lambda: _online(http, user), limit=60)
        device_id = (await _device(http, user))["id"]
        assert (await deploy(http, user, device_id, expected["id"])).status_code == 201
    assert model_path(session) == tmp_path / "s.model.json"
    kept = json.loads(model_path(session).read_text())
    assert {k: kept[k] for k in ("id", "sha256")} == expected
    assert model_path(session).stat().st_mode & 0o777 == 0o600
    shown = CliRunner().invoke(cli, ["agent", "status", "--session-file", str(session), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["current_model"] == expected
    text = CliRunner().invoke(cli, ["agent", "status", "--session-file", str(session)]).stdout
    assert f"model:    {expected['id']} (sha256 {expected['sha256'][:16]}…)" in text
    assert (await _device(http, user))["current_model"] == expected

    # The server misses the outcome (here: its record is wiped); the restarted agent,
    # reading its model from disk, reports it on connect and the record is right again.
    runtime: Runtime = live.app.state.runtime
    async with runtime.db.transaction() as conn:
        await conn.execute(
            update(devices)
            .where(devices.c.id == uuid.UUID(device_id))
            .values(current_model_id=None, current_model_sha256=None)
        )
    assert (await _device(http, user))["current_model"] is None
    async with running(Agent(_with(options, pairing_token=None))):

        async def repaired() -> bool:
            return bool((await _device(http, user))["current_model"] == expected)

        await wait_for(repaired, limit=30)


async def test_a_failed_hook_leaves_the_kept_model_as_it_was(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    session = tmp_path / "s.json"
    flag = tmp_path / "fail"
    script = f"import os, sys; sys.exit(3 if os.path.exists({str(flag)!r}) else 0)"
    hook = f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"
    options = _with(
        agent_options(live, device_port, session, token),
        models_dir=tmp_path / "m",
        deploy_hook=hook,
    )
    good = nef(20_000, seed=1)
    first = await uploaded(http, user, good, chip="kl720")
    second = await uploaded(http, user, nef(20_000, seed=2), chip="kl720")
    agent = Agent(options)
    async with running(agent):
        await wait_for(lambda: _online(http, user), limit=60)
        device_id = (await _device(http, user))["id"]
        assert (await deploy(http, user, device_id, str(first["id"]))).json()["status"] == (
            "succeeded"
        )
        flag.write_text("")
        assert (await deploy(http, user, device_id, str(second["id"]))).status_code == 502
        await asyncio.sleep(0.5)  # a few status rounds: nothing new to report
    expected = {"id": str(first["id"]), "sha256": hashlib.sha256(good).hexdigest()}
    assert agent.current_model == expected
    assert json.loads(model_path(session).read_text())["id"] == expected["id"]
    device = await _device(http, user)
    assert device["current_model"] == expected
    assert device["previous_model"] is None


async def _online(http: httpx.AsyncClient, user: User) -> bool:
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    return bool(items) and items[0]["remote_status"] == "online"
