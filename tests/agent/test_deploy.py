"""Deployments end to end: the real server and the real agent on loopback.

The agent writes the model into its models directory, checks its sha256, runs its
hook and answers; the record on the server says how it went. Other streams still
reach the local service through the same dispatcher.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import signal
import sys
import uuid
from pathlib import Path

import httpx

from testkit.device_service import pattern
from testkit.live import LiveServer
from tests.support.agent import agent_cli, agent_options, running
from tests.support.api import User, signup
from tests.support.audit import stored_events
from tests.support.deployments import deploy, deployments_of, set_model_sha
from tests.support.devices import pairing_token
from tests.support.models import nef, uploaded
from tests.support.tunnel import API, wait_for
from visiona.agent.runner import Agent
from visiona.kit.runtime import Runtime

HOOK = """
import json, os, sys
keys = ["VISIONA_MODEL_PATH", "VISIONA_MODEL_ID", "VISIONA_MODEL_SHA256", "VISIONA_MODEL_CHIP"]
with open(sys.argv[1], "w") as out:
    json.dump({key: os.environ[key] for key in keys}, out)
"""


def _runtime(live: LiveServer) -> Runtime:
    runtime: Runtime = live.app.state.runtime
    return runtime


async def _online_device(http: httpx.AsyncClient, user: User) -> str:
    async def online() -> bool:
        items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
        return bool(items) and items[0]["remote_status"] == "online"

    await wait_for(online, limit=60)
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    return str(items[0]["id"])


async def test_cli_agent_stores_the_model_runs_the_hook_and_still_forwards(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    models_dir = tmp_path / "models"
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    hook_out = tmp_path / "hook.json"
    command = " ".join(shlex.quote(part) for part in (sys.executable, str(hook), str(hook_out)))
    proc = await agent_cli(
        "--server",
        live.url,
        "--token",
        token,
        "--forward",
        f"127.0.0.1:{device_port}",
        "--session-file",
        str(tmp_path / "s.json"),
        "--serial",
        "SN-DEPLOY",
        "--type",
        "kl720",
        "--models-dir",
        str(models_dir),
        "--deploy-hook",
        command,
    )
    try:
        device_id = await _online_device(http, user)
        content = nef(3 * 1024 * 1024 + 5, seed=7)
        model = await uploaded(http, user, content, chip="kl720")
        response = await deploy(http, user, device_id, str(model["id"]))
        assert response.status_code == 201, response.text
        record = response.json()
        assert record["status"] == "succeeded", record
        stored = models_dir / f"{model['id']}.nef"
        assert stored.read_bytes() == content
        assert sorted(p.name for p in models_dir.iterdir()) == [stored.name]  # no temp file left
        assert json.loads(hook_out.read_text()) == {
            "VISIONA_MODEL_PATH": str(stored),
            "VISIONA_MODEL_ID": str(model["id"]),
            "VISIONA_MODEL_SHA256": hashlib.sha256(content).hexdigest(),
            "VISIONA_MODEL_CHIP": "kl720",
        }
        assert await deployments_of(http, user, device_id) == [record]

        # every other stream still goes to the local service, bodies both ways
        download = await http.get(
            f"{API}/devices/{device_id}/proxy/bytes/{1_000_003}", headers=user.headers
        )
        assert download.content == pattern(1_000_003)
        upload = pattern(2_000_000)
        sent = await http.post(
            f"{API}/devices/{device_id}/proxy/upload", content=upload, headers=user.headers
        )
        assert sent.json()["sha256"] == hashlib.sha256(upload).hexdigest()
        # the reserved path cannot be reached through the proxy
        sneaky = await http.put(
            f"{API}/devices/{device_id}/proxy/visiona/models/{model['id']}",
            content=b"not a model",
            headers=user.headers,
        )
        assert sneaky.status_code == 403
        assert sneaky.json()["error"]["code"] == "reserved_path"
        assert stored.read_bytes() == content

        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_failing_hook_fails_the_record_with_its_reason(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    script = "import sys; sys.stderr.write('no dongle on the bus\\n'); sys.exit(4)"
    options = agent_options(live, device_port, tmp_path / "s.json", token)
    options = options.__class__(
        **{
            **options.__dict__,
            "models_dir": tmp_path / "models",
            "deploy_hook": f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}",
        }
    )
    agent = Agent(options)
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = await _online_device(http, user)
        model = await uploaded(http, user, nef(50_000), chip="kl720")
        response = await deploy(http, user, device_id, str(model["id"]))
    assert response.status_code == 502, response.text  # a failed transfer: 502 with the record
    assert response.json()["error"]["code"] == "deployment_failed"
    record = response.json()["error"]["deployment"]
    assert record["status"] == "failed"
    assert record["error"] == (
        "the agent answered 500: hook_failed: The deploy hook exited with 4: no dongle on the bus"
    )
    # the file itself arrived intact before the hook ran
    assert (tmp_path / "models" / f"{model['id']}.nef").read_bytes() == nef(50_000)


async def test_a_wrong_checksum_is_refused_and_nothing_is_kept(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    options = agent_options(live, device_port, tmp_path / "s.json", token)
    models_dir = tmp_path / "models"
    options = options.__class__(**{**options.__dict__, "models_dir": models_dir})
    agent = Agent(options)
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = await _online_device(http, user)
        model = await uploaded(http, user, nef(70_000), chip="kl720")
        await set_model_sha(_runtime(live), str(model["id"]), hashlib.sha256(b"other").hexdigest())
        response = await deploy(http, user, device_id, str(model["id"]))
        # a later, correct deployment of another model still works on the same tunnel
        good = await uploaded(http, user, nef(20_000, seed=3), chip="kl720")
        second = await deploy(http, user, device_id, str(good["id"]))
    assert response.status_code == 502, response.text  # a failed transfer: 502 with the record
    assert response.json()["error"]["code"] == "deployment_failed"
    record = response.json()["error"]["deployment"]
    assert record["status"] == "failed"
    assert record["error"].startswith("the agent answered 422: sha256_mismatch")
    assert second.json()["status"] == "stored"  # this agent has no deploy hook
    assert second.json()["error"] is None
    assert second.json()["detail"] == (
        f"stored at {models_dir / (str(good['id']) + '.nef')} on the PC; no deploy hook configured"
    )
    [event] = await stored_events(
        live.app, action="deployment.stored", target_id=second.json()["id"]
    )
    assert event.detail == {"model_id": str(good["id"]), "detail": second.json()["detail"]}
    assert sorted(p.name for p in models_dir.iterdir()) == [f"{good['id']}.nef"]
    assert uuid.UUID(record["model_id"]) == uuid.UUID(str(model["id"]))


async def test_a_hook_with_shell_syntax_that_exits_3_fails_the_record(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    options = agent_options(live, device_port, tmp_path / "s.json", token)
    options = options.__class__(
        **{
            **options.__dict__,
            "models_dir": tmp_path / "models",
            "deploy_hook": 'echo "flashing $VISIONA_MODEL_CHIP failed" >&2; exit 3',
        }
    )
    agent = Agent(options)
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = await _online_device(http, user)
        model = await uploaded(http, user, nef(10_000), chip="kl720")
        response = await deploy(http, user, device_id, str(model["id"]))
    assert response.status_code == 502, response.text
    record = response.json()["error"]["deployment"]
    assert record["status"] == "failed"
    assert record["error"] == (
        "the agent answered 500: hook_failed: The deploy hook exited with 3: flashing kl720 failed"
    )
