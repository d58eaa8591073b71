"""The agent renews its session token before it expires (issue 11, item 1)."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import httpx
import pytest

from testkit.live import LiveServer
from tests.support.agent import agent_options, only_device, running
from tests.support.api import signup
from tests.support.devices import pairing_token
from tests.support.tunnel import API, wait_for
from visiona.agent.runner import Agent
from visiona.kit.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short session tokens (the agent renews them), no pair rate limit."""
    return settings.model_copy(
        update={
            "pair_rate_limit": 1_000_000,
            "tunnel_status_interval": 0.2,
            "session_token_ttl": 9,
        }
    )


async def test_the_agent_renews_its_session_before_it_expires(
    live: LiveServer, http: httpx.AsyncClient, device_port: int, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    session_file = tmp_path / "session.json"
    # 9 s tokens: renewed a third of their life ahead, i.e. 6 s after pairing
    agent = Agent(agent_options(live, device_port, session_file, token))
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        first = json.loads(session_file.read_text())

        async def renewed() -> bool:
            return agent.renewals >= 1

        await wait_for(renewed, limit=30)
        second = json.loads(session_file.read_text())
        assert second["session_token"] != first["session_token"]
        assert second["device_id"] == first["device_id"]
        assert second["expires_at"] > first["expires_at"]
        assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
        assert not list(tmp_path.glob(".*.tmp"))  # noqa: ASYNC240 - a glob of a temp dir  # written atomically: no leftovers
        old = await http.post(
            f"{API}/agent/status",
            json={"usb_status": "offline"},
            headers={"Authorization": f"Bearer {first['session_token']}"},
        )
        assert old.status_code == 401
        assert agent.connected.is_set()  # the tunnel stayed up
    # the next run uses the renewed session
    again = Agent(agent_options(live, device_port, session_file, None))
    async with running(again):
        await asyncio.wait_for(again.connected.wait(), 30)
        assert str((await only_device(http, user))["id"]) == first["device_id"]
