"""The agent against the real server: pairing, forwarding, status, reconnect, refusal, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import stat
import uuid
from pathlib import Path

import httpx

from testkit.device_service import pattern
from testkit.live import LiveServer
from tests.support.agent import agent_cli, agent_options, only_device, running
from tests.support.api import signup
from tests.support.devices import pairing_token
from tests.support.tunnel import API, wait_for
from visiona.agent.runner import Agent
from visiona.tunnel.dependencies import HUB
from visiona.wire import CLOSE_GOING_AWAY


async def test_agent_pairs_forwards_reports_and_reconnects(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    session_file = tmp_path / "agent" / "session.json"
    agent = Agent(agent_options(live, device_port, session_file, token), stable_after=0.0)
    async with running(agent) as (_stop, task):
        await asyncio.wait_for(agent.connected.wait(), 30)
        assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
        assert "vst_" in session_file.read_text()
        device = await only_device(http, user)
        device_id = str(device["id"])
        assert device["device_type"] == "kl720"

        async def reported() -> bool:
            shown = await only_device(http, user)
            return shown["remote_status"] == "online" and shown["status"] in {
                "online",
                "offline",
                "unknown",
            }

        await wait_for(reported)
        response = await http.get(
            f"{API}/devices/{device_id}/proxy/bytes/{3_000_001}", headers=user.headers
        )
        assert (
            hashlib.sha256(response.content).digest() == hashlib.sha256(pattern(3_000_001)).digest()
        )
        upload = pattern(2_000_000)
        response = await http.post(
            f"{API}/devices/{device_id}/proxy/upload", content=upload, headers=user.headers
        )
        assert response.json()["sha256"] == hashlib.sha256(upload).hexdigest()

        # the server goes away (closes the tunnel): the agent comes back by itself
        link = HUB.of(live.app).get(uuid.UUID(device_id))
        assert link is not None
        await link.close(CLOSE_GOING_AWAY, "test restart")

        async def reconnected() -> bool:
            return agent.connections >= 2 and HUB.of(live.app).get(uuid.UUID(device_id)) is not None

        await wait_for(reconnected, limit=30)
        assert not task.done()

    # a second run uses the stored session: no pairing token needed, same device
    again = Agent(agent_options(live, device_port, session_file, None))
    async with running(again):
        await asyncio.wait_for(again.connected.wait(), 30)
        assert (await only_device(http, user))["id"] == device_id


async def test_agent_exits_3_when_unpaired_and_on_a_bad_pairing_token(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    agent = Agent(agent_options(live, device_port, tmp_path / "s.json", token))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = (await only_device(http, user))["id"]
        response = await http.delete(f"{API}/devices/{device_id}", headers=user.headers)
        assert response.status_code == 204
        assert await asyncio.wait_for(task, 30) == 3
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
    bad = Agent(agent_options(live, device_port, tmp_path / "other.json", "vpt_not-a-token"))
    assert await asyncio.wait_for(bad.run(asyncio.Event()), 30) == 3
    assert not (tmp_path / "other.json").exists()


async def test_cli_exits_3_with_a_clear_line_on_refused_credentials(
    live: LiveServer, tmp_path: Path
) -> None:
    proc = await agent_cli(
        "--server",
        live.url,
        "--token",
        "vpt_wrong",
        "--forward",
        "127.0.0.1:9",
        "--session-file",
        str(tmp_path / "s.json"),
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3
    assert "refused" in stderr.decode()
    assert "vpt_wrong" not in stderr.decode()


async def test_cli_runs_until_sigterm_and_stops_cleanly(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    proc = await agent_cli(
        "--server",
        live.url,
        "--token",
        token,
        "--forward",
        f"127.0.0.1:{device_port}",
        "--session-file",
        str(tmp_path / "s.json"),
        "--name",
        "cli",
        "--serial",
        "SN-CLI",
    )
    try:

        async def online() -> bool:
            items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
            return bool(items) and items[0]["remote_status"] == "online"

        await wait_for(online, limit=60)
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()
        assert token not in stderr.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
