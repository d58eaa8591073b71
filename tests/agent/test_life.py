"""The agent's life on a user's PC (issue 11, item 1), against the real server.

Re-pairing with a new token, pairing while the server is down, a malformed --server,
session renewal, the USB hint, `agent status`, `agent install-service`, close codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import stat
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from testkit.live import LiveServer
from testkit.servers import free_port
from tests.support.agent import agent_options, only_device, running
from tests.support.api import signup
from tests.support.devices import pairing_token
from tests.support.tunnel import API, wait_for
from visiona.agent.runner import Agent
from visiona.cli import app as cli
from visiona.tunnel.dependencies import HUB
from visiona.wire import CLOSE_GOING_AWAY


async def _agent_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "visiona",
        "agent",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _stop(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    return stderr.decode()


async def test_a_new_token_replaces_a_dead_session_file(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    first = (await pairing_token(http, user))["token"]
    session_file = tmp_path / "session.json"
    agent = Agent(agent_options(live, device_port, session_file, first))
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
    old = json.loads(session_file.read_text())
    unpaired = await http.delete(f"{API}/devices/{old['device_id']}", headers=user.headers)
    assert unpaired.status_code == 204

    # no token: exit 3, naming the file that holds the dead session
    args = ["--server", live.url, "--forward", f"127.0.0.1:{device_port}"]
    proc = await _agent_cli(*args, "--session-file", str(session_file))
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3
    assert str(session_file) in stderr.decode()
    assert "Traceback" not in stderr.decode()

    # a new token: pairs again and replaces the file
    second = (await pairing_token(http, user))["token"]
    proc = await _agent_cli(*args, "--session-file", str(session_file), "--token", second)
    try:

        async def online() -> bool:
            items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
            return any(item["remote_status"] == "online" for item in items)

        await wait_for(online, limit=60)
    finally:
        stderr_text = await _stop(proc)
    assert proc.returncode == 0, stderr_text
    new = json.loads(session_file.read_text())
    assert new["session_token"] != old["session_token"]
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    assert "replacing the previous session" in stderr_text
    assert second not in stderr_text

    async def offline() -> bool:
        items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
        return all(item["remote_status"] != "online" for item in items)

    # the stopped agent's batched offline is written before the next one is awaited, so
    # "online" below is the next agent's (otherwise it is stopped before it runs)
    await wait_for(offline, limit=60)

    # the same (now used) token again: the stored session is kept, no pairing attempt
    proc = await _agent_cli(*args, "--session-file", str(session_file), "--token", second)
    try:
        await wait_for(online, limit=60)
    finally:
        stderr_text = await _stop(proc)
    assert proc.returncode == 0, stderr_text
    assert json.loads(session_file.read_text())["session_token"] == new["session_token"]
    assert "paired;" not in stderr_text


async def test_first_pairing_retries_while_the_server_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    proc = await _agent_cli(
        "--server",
        f"http://127.0.0.1:{port}",
        "--token",
        "vpt_whatever",
        "--forward",
        "127.0.0.1:9",
        "--session-file",
        str(tmp_path / "s.json"),
    )
    assert proc.stderr is not None
    lines: list[str] = []
    while sum("pairing attempt" in line for line in lines) < 3:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "".join(lines)
        lines.append(line)
    stderr = "".join(lines) + await _stop(proc)
    assert proc.returncode == 0
    attempts = [line for line in stderr.splitlines() if "pairing attempt" in line]
    assert "pairing attempt 1 failed: cannot reach" in attempts[0]
    assert "pairing attempt 2 failed" in attempts[1]
    assert "retrying in" in attempts[0]
    assert "Traceback" not in stderr
    assert "vpt_whatever" not in stderr
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize(
    "server", ["localhost:8080", "ftp://example.com", "http://bad host", "http://", "http://h:99x"]
)
def test_a_malformed_server_is_one_line_and_exit_2(server: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "agent",
            "--server",
            server,
            "--forward",
            "127.0.0.1:9",
            "--session-file",
            str(tmp_path / "s"),
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: --server")


async def test_shutdown_logs_say_what_happened_and_status_reports_it(  # noqa: PLR0917 - fixtures
    live: LiveServer,
    http: httpx.AsyncClient,
    device_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="visiona.agent")
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    session_file = tmp_path / "session.json"
    agent = Agent(agent_options(live, device_port, session_file, token), stable_after=0.0)
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = str((await only_device(http, user))["id"])
        link = HUB.of(live.app).get(uuid.UUID(device_id))
        assert link is not None
        await link.close(CLOSE_GOING_AWAY, "server shutting down")

        async def back() -> bool:
            return agent.connections >= 2 and agent.connected.is_set()

        await wait_for(back, limit=30)
        status = CliRunner().invoke(cli, ["agent", "status", "--session-file", str(session_file)])
        assert status.exit_code == 0, status.output
        assert f"device:   {device_id}" in status.stdout
        assert f"server:   {live.url}" in status.stdout
        assert "tunnel:   up since" in status.stdout
        assert "session:  expires" in status.stdout
    messages = [r.getMessage() for r in caplog.records if "tunnel closed" in r.getMessage()]
    assert "agent: tunnel closed: server shutting down (1001)" in messages
    assert "agent: tunnel closed: agent stopping" in messages
    assert not any("None" in m for m in messages)

    info = CliRunner().invoke(
        cli, ["agent", "status", "--session-file", str(session_file), "--json"]
    )
    body = json.loads(info.stdout)
    assert body["device_id"] == device_id
    assert body["tunnel"] == "stopped"
    assert body["last_close"] == "agent stopping"

    # install-service writes a systemd user unit that reuses this session
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    installed = CliRunner().invoke(
        cli,
        [
            "agent",
            "install-service",
            "--forward",
            f"127.0.0.1:{device_port}",
            "--session-file",
            str(session_file),
        ],
    )
    assert installed.exit_code == 0, installed.output
    unit = tmp_path / "xdg" / "systemd" / "user" / "visiona-agent.service"
    text = unit.read_text()
    assert f"agent --server {live.url} --forward 127.0.0.1:{device_port}" in text
    assert f"--session-file {session_file.resolve()}" in text
    assert "Restart=on-failure" in text
    assert "RestartPreventExitStatus=2 3" in text
    assert "WantedBy=default.target" in text
    assert token not in text
    assert "systemctl --user enable --now visiona-agent" in installed.stdout

    missing = CliRunner().invoke(
        cli,
        [
            "agent",
            "install-service",
            "--forward",
            "127.0.0.1:1",
            "--session-file",
            str(tmp_path / "none.json"),
        ],
    )
    assert missing.exit_code == 1
    assert "pair first" in missing.stderr


async def test_usb_problems_are_said_once_with_the_fix(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    from visiona.agent import usb  # noqa: PLC0415 - the module under test

    try:
        usb._find()
    except Exception:  # noqa: BLE001 - the probe: this machine cannot inspect USB
        inspectable = False
    else:
        inspectable = True
    if inspectable:
        pytest.skip("this machine has a working libusb; the hint is for machines without one")
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    proc = await _agent_cli(
        "--server",
        live.url,
        "--token",
        token,
        "--forward",
        f"127.0.0.1:{device_port}",
        "--session-file",
        str(tmp_path / "s.json"),
    )
    try:

        async def reported() -> bool:
            items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
            return bool(items) and items[0]["status"] == "unknown"

        await wait_for(reported, limit=60)
        await asyncio.sleep(1.0)  # a few more polls
    finally:
        stderr = await _stop(proc)
    hints = [line for line in stderr.splitlines() if "udev rule" in line]
    assert len(hints) == 1, stderr
    assert 'ATTRS{idVendor}=="3231"' in hints[0]
    assert "INFO" in hints[0]
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert items[0]["device_type"] == "kl520"  # no dongle readable: the default type


def test_product_ids_map_to_the_kneron_chips() -> None:
    from visiona.agent.usb import device_type_of  # noqa: PLC0415 - the function under test

    assert device_type_of(0x0100) == "kl520"
    assert device_type_of(0x0720) == "kl720"
    assert device_type_of(0x0200) == "kl720"
    assert device_type_of(0x0630) == "kl630"
    assert device_type_of(0x0732) == "kl730"
    assert device_type_of(0x9999) is None
