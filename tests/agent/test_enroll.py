"""`visiona agent --enroll-key`: real agent processes pair with one reusable key."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from testkit.live import LiveServer
from tests.support.agent import agent_cli
from tests.support.api import signup
from tests.support.tunnel import API, wait_for


async def test_two_agents_enrol_with_one_key_get_its_tags_and_never_log_it(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    created = await http.post(
        f"{API}/enrollment-keys",
        json={
            "name": "bench",
            "max_uses": 2,
            "expires_in_hours": 1,
            "tags": {"site": "bench"},
            "name_template": "pc-{serial}",
        },
        headers=user.headers,
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    procs = [
        await agent_cli(
            "--server",
            live.url,
            "--enroll-key",
            key,
            "--forward",
            f"127.0.0.1:{device_port}",
            "--session-file",
            str(tmp_path / f"s{i}.json"),
            "--serial",
            f"SN-ENROLL-{i}",
            "--type",
            "kl720",
        )
        for i in range(2)
    ]
    try:

        async def online() -> bool:
            items = (
                await http.get(
                    f"{API}/devices", params={"selector": "site=bench"}, headers=user.headers
                )
            ).json()["items"]
            return len(items) == 2 and all(i["remote_status"] == "online" for i in items)

        await wait_for(online, limit=60)
        items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
        assert sorted(i["name"] for i in items) == ["pc-SN-ENROLL-0", "pc-SN-ENROLL-1"]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            _, stderr = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, stderr.decode()
            assert key not in stderr.decode()
            assert "paired" in stderr.decode()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_used_up_key_is_refused_with_exit_3(
    live: LiveServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    user = await signup(http)
    created = await http.post(
        f"{API}/enrollment-keys",
        json={"name": "once", "max_uses": 1, "expires_in_hours": 1},
        headers=user.headers,
    )
    key = created.json()["key"]
    first = await http.post(
        f"{API}/agent/enroll",
        json={"enrollment_key": key, "serial_number": "SN-X", "device_type": "kl520"},
    )
    assert first.status_code == 201
    proc = await agent_cli(
        "--server",
        live.url,
        "--enroll-key",
        key,
        "--forward",
        "127.0.0.1:9",
        "--session-file",
        str(tmp_path / "s.json"),
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3
    assert "enrollment key" in stderr.decode()
    assert key not in stderr.decode()
