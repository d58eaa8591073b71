"""Two agents on one computer: each installation pairs as its own device, and an agent
whose tunnel keeps being superseded by another agent of the same device backs off."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import httpx
import pytest

from testkit.live import LiveServer
from tests.support.agent import agent_options, running
from tests.support.api import signup
from tests.support.devices import pairing_token
from tests.support.tunnel import wait_for
from visiona.agent import main as agent_main
from visiona.agent.runner import Agent


def test_the_default_serial_is_unique_per_installation_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_main, "dongle_serial", lambda: None)
    alice, bob = tmp_path / "alice" / ".config" / "visiona", tmp_path / "bob"
    first = agent_main.default_serial(alice)
    assert first == agent_main.default_serial(alice)  # kept in the state directory
    assert first != agent_main.default_serial(bob)
    assert (alice / agent_main.INSTALLATION_ID_FILE).is_file()


def test_the_dongles_own_serial_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_main, "dongle_serial", lambda: "KL520-0012AB")
    assert agent_main.default_serial(tmp_path) == "KL520-0012AB"
    assert not (tmp_path / agent_main.INSTALLATION_ID_FILE).exists()


async def test_a_superseded_agent_backs_off_and_says_why(
    live: LiveServer,
    http: httpx.AsyncClient,
    device_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    first = Agent(agent_options(live, device_port, tmp_path / "a.json", token), superseded_first=60)
    async with running(first):
        await asyncio.wait_for(first.connected.wait(), 30)
        # a second agent with the same credentials (a copied session file)
        shutil.copy(tmp_path / "a.json", tmp_path / "b.json")
        second = Agent(
            agent_options(live, device_port, tmp_path / "b.json", None), superseded_first=60
        )
        with caplog.at_level(logging.WARNING, logger="visiona.agent.runner"):
            async with running(second):
                await asyncio.wait_for(second.connected.wait(), 30)

                async def first_backs_off() -> bool:
                    return first.superseded_in_a_row == 1

                await wait_for(first_backs_off, limit=30)
                assert second.connected.is_set()
                assert first.connections == 1
        lines = [r.getMessage() for r in caplog.records if "another agent" in r.getMessage()]
        assert lines, caplog.text
        assert "(superseded 1 time(s) in a row); waiting" in lines[0]
        assert "--serial" in lines[0]
        delay = float(lines[0].split("waiting ")[1].split("s ")[0])
        assert delay >= 30  # between half and all of the first step (60 s)
