"""SIGTERM drains the node: upgrades refused, tunnels closed 1001 with a hint, records kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.api import User, signup
from tests.support.node import ServeProcess, serve_process, sqlite_env
from tests.support.tunnel import API, FakeAgent, connect_agent, paired_agent_token, wait_for
from visiona.agent.runner import Agent, AgentOptions
from visiona.wire import reconnect_hint

WINDOW = 2.0
_HINT = re.compile(r"tunnel closed: server shutting down \(1001: (.*)\)")
_RECONNECTING = re.compile(r"reconnecting in ([0-9.]+)s")


async def _drain_refusal(node: ServeProcess, token: str) -> dict[str, Any] | None:
    """Once the node drains, try upgrades until one is refused 503 ``draining`` (None: the
    node was gone first)."""
    async with asyncio.timeout(30):
        while "tunnel: draining" not in node.text():  # noqa: ASYNC110 - a log file
            await asyncio.sleep(0.01)
        while node.proc.poll() is None:
            try:
                async with connect(
                    node.ws_url, additional_headers={"Authorization": f"Bearer {token}"}
                ):
                    pass
            except InvalidStatus as err:
                body: dict[str, Any] = json.loads(err.response.body or b"{}")["error"]
                if err.response.status_code == 503 and body.get("reason") == "draining":
                    body["retry_after"] = err.response.headers["Retry-After"]
                    return body
            except OSError:
                return None
            await asyncio.sleep(0.02)
    return None


async def test_sigterm_drains_tunnels_with_1001_and_a_hint_recorded_as_the_shutdown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="visiona.agent")
    env = sqlite_env(tmp_path, tunnel_drain_window=str(WINDOW), tunnel_status_interval="0.3")
    with serve_process(env) as node:
        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=node.url, timeout=30))
            user = await signup(http)
            paired = [await paired_agent_token(http, user) for _ in range(2)]
            _, spare = await paired_agent_token(http, user)  # knocks during the drain
            live = cast(Any, node)  # connect_agent needs only its ws_url
            fakes: list[FakeAgent] = [
                await stack.enter_async_context(connect_agent(live, token)) for _, token in paired
            ]
            # the project's own agent on the third device
            pairing = await http.post(f"{API}/pairing-tokens", json={}, headers=user.headers)
            agent = Agent(
                AgentOptions(
                    server=node.url,
                    forward_host="127.0.0.1",
                    forward_port=9,
                    session_file=tmp_path / "agent-session.json",
                    pairing_token=pairing.json()["token"],
                    usb_poll_interval=3600,
                ),
                stable_after=0.0,
            )
            stop = asyncio.Event()
            running = asyncio.create_task(agent.run(stop))
            await asyncio.wait_for(agent.connected.wait(), 30)
            stored = json.loads((tmp_path / "agent-session.json").read_text())
            drained = [device for device, _ in paired] + [stored["device_id"]]

            async def all_online() -> bool:
                items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
                online = {d["id"] for d in items if d["remote_status"] == "online"}
                return online == set(drained)

            await wait_for(all_online, limit=30)
            node.proc.terminate()  # SIGTERM
            refusal = await _drain_refusal(node, spare)
            code = await asyncio.to_thread(node.proc.wait, 60)

            async def agent_waits() -> bool:
                return any(_RECONNECTING.search(r.getMessage()) for r in caplog.records)

            await wait_for(agent_waits, limit=30)
            stop.set()
            await asyncio.wait_for(running, 30)
            for fake in fakes:
                await asyncio.wait_for(fake.closed.wait(), 10)
    log = node.text()
    # uvicorn re-raises the signal it caught once it stopped (systemd counts that clean)
    assert code in {0, -signal.SIGTERM}, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert " ERROR " not in log, log[-3000:]
    assert "tunnel: draining 3 tunnel(s) over 2.0 s" in log
    assert refusal is not None, "no upgrade was refused 503 draining"
    assert refusal["code"] == "tunnel_unavailable"
    assert int(refusal["retry_after"]) >= 1
    for fake in fakes:
        assert fake.close_code == 1001
        hint = reconnect_hint(fake.close_code, fake.close_reason or "")
        assert hint is not None, fake.close_reason
        assert 0 <= hint <= WINDOW
    # the project's agent waits what the server asked, not its own backoff
    messages = [r.getMessage() for r in caplog.records]
    asked = next(m.group(1) for m in map(_HINT.search, messages) if m)
    waited = next(m.group(1) for m in map(_RECONNECTING.search, messages) if m)
    assert float(waited) == pytest.approx(reconnect_hint(1001, asked), abs=0.05)

    # the next start finds nothing left over; the trail names the shutdown as the cause
    with serve_process(env) as again:
        assert "left from a previous run" not in again.text()
        async with httpx.AsyncClient(base_url=again.url, timeout=30) as http:
            await _assert_shutdown_recorded(http, user, drained)


async def _assert_shutdown_recorded(
    http: httpx.AsyncClient, user: User, device_ids: list[str]
) -> None:
    for device_id in device_ids:
        events = (
            await http.get(f"{API}/devices/{device_id}/audit-events", headers=user.headers)
        ).json()["items"]
        ends = [e for e in events if e["action"].startswith("tunnel.disconnected")]
        assert len(ends) == 1, ends
        assert ends[0]["actor_type"] == "system"
        assert ends[0]["detail"] == {"reason": "server shutting down"}
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert {d["remote_status"] for d in items} == {"offline"}  # the spare never connected
