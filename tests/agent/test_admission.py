"""Device-aware admission with the real agent: in-flight bound, deployments, busy devices.

The local service holds each request open until the test lets it go, so requests
really are in flight; the deploy hook blocks until a marker file exists, so a
deployment really is in progress while the test probes the proxy and the API.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.live import LiveServer
from tests.support.agent import agent_options, running
from tests.support.api import User, signup
from tests.support.deployments import deploy, deployments_of
from tests.support.devices import pairing_token
from tests.support.models import nef, uploaded
from tests.support.tunnel import API, wait_for
from visiona.agent.runner import Agent
from visiona.kit.settings import Settings

WAIT_HOOK = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
while not marker.exists():
    time.sleep(0.02)
"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Two requests in flight per device; deployments and busy devices hold calls off."""
    return settings.model_copy(
        update={"proxy_max_inflight_per_device": 2, "proxy_during_deploy": "refuse"}
    )


class HoldingService:
    """A local service that answers each request only once ``release`` is set.

    ``busy`` (None: no header) is sent as ``X-Visiona-Busy`` on every answer.
    """

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.waiting = 0
        self.busy: bool | None = None
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self.release.set()
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        path = head.split(b" ", 2)[1]
        if path == b"/probe":  # the busy probe: 503 while busy
            status = b"503 Busy" if self.busy else b"200 OK"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        else:
            self.waiting += 1
            await self.release.wait()
            self.waiting -= 1
            extra = b""
            if self.busy is not None:
                extra = b"X-Visiona-Busy: %d\r\n" % int(self.busy)
            writer.write(b"HTTP/1.1 200 OK\r\n" + extra + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()


@pytest.fixture
async def service() -> AsyncIterator[HoldingService]:
    """The holding local service on a loopback port."""
    holding = HoldingService()
    await holding.start()
    yield holding
    await holding.stop()


async def _agent(
    live: LiveServer, http: httpx.AsyncClient, port: int, tmp_path: Path, **overrides: Any
) -> tuple[User, Agent]:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    options = replace(agent_options(live, port, tmp_path / "s.json", token), **overrides)
    return user, Agent(options)


async def only_device(http: httpx.AsyncClient, user: User) -> dict[str, Any]:
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    device: dict[str, Any] = items[0]
    return device


def _busy(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["code"], error["reason"]) == ("device_busy", reason)
    assert int(response.headers["retry-after"]) >= 1


def _refused_count(metrics: str, reason: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'visiona_proxy_refused_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no visiona_proxy_refused_total for {reason}")


async def test_requests_beyond_the_inflight_bound_get_429_and_a_slot_frees_on_completion(
    live: LiveServer, http: httpx.AsyncClient, service: HoldingService, tmp_path: Path
) -> None:
    user, agent = await _agent(live, http, service.port, tmp_path)
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = str((await only_device(http, user))["id"])
        url = f"{API}/devices/{device_id}/proxy/hold"
        service.release.clear()
        held = [asyncio.create_task(http.get(url, headers=user.headers)) for _ in range(2)]

        async def both_waiting() -> bool:
            return service.waiting == 2

        await wait_for(both_waiting, limit=30)
        before = _refused_count((await http.get("/metrics")).text, "inflight")
        _busy(await http.get(url, headers=user.headers), "inflight")
        after = _refused_count((await http.get("/metrics")).text, "inflight")
        assert after == before + 1
        service.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        # the slots were given back: the next requests pass again
        again = await asyncio.gather(*(http.get(url, headers=user.headers) for _ in range(2)))
        assert [r.status_code for r in again] == [200, 200]


async def test_a_deployment_in_progress_serialises_deployments_and_holds_proxied_calls_off(
    live: LiveServer, http: httpx.AsyncClient, service: HoldingService, tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    hook = tmp_path / "hook.py"
    hook.write_text(WAIT_HOOK)
    command = " ".join(shlex.quote(p) for p in (sys.executable, str(hook), str(marker)))
    user, agent = await _agent(
        live, http, service.port, tmp_path, models_dir=tmp_path / "models", deploy_hook=command
    )
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = str((await only_device(http, user))["id"])
        first = await uploaded(http, user, nef(100_000, seed=1), chip="kl720")
        second = await uploaded(http, user, nef(100_000, seed=2), chip="kl720")
        running_deploy = asyncio.create_task(deploy(http, user, device_id, str(first["id"])))

        async def transferring() -> bool:
            records = await deployments_of(http, user, device_id)
            return bool(records) and records[0]["status"] == "transferring"

        await wait_for(transferring, limit=30)
        [record] = await deployments_of(http, user, device_id)
        refused = await deploy(http, user, device_id, str(second["id"]))
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "deployment_in_progress"
        assert error["deployment_id"] == record["id"]
        assert record["id"] in error["message"]
        _busy(
            await http.get(f"{API}/devices/{device_id}/proxy/x", headers=user.headers), "deploying"
        )
        assert service.waiting == 0  # the refused call never crossed the tunnel

        marker.touch()
        done = await asyncio.wait_for(running_deploy, 60)
        assert done.status_code == 201, done.text
        assert len(await deployments_of(http, user, device_id)) == 1  # the 409 recorded nothing
        proxied = await http.get(f"{API}/devices/{device_id}/proxy/x", headers=user.headers)
        assert proxied.status_code == 200
        later = await deploy(http, user, device_id, str(second["id"]))
        assert later.status_code == 201, later.text


async def test_the_busy_probe_shows_in_the_device_and_refuses_calls_at_the_cloud(
    live: LiveServer, http: httpx.AsyncClient, service: HoldingService, tmp_path: Path
) -> None:
    user, agent = await _agent(
        live,
        http,
        service.port,
        tmp_path,
        busy_probe=f"http://127.0.0.1:{service.port}/probe",
        busy_poll_interval=0.05,
    )
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = str((await only_device(http, user))["id"])
        url = f"{API}/devices/{device_id}/proxy/x"

        async def shows(busy: bool) -> bool:
            return bool((await only_device(http, user))["busy"]) is busy

        await wait_for(lambda: shows(busy=False), limit=30)
        service.busy = True
        await wait_for(lambda: shows(busy=True), limit=30)
        served_before = service.waiting
        _busy(await http.get(url, headers=user.headers), "busy")
        assert service.waiting == served_before
        service.busy = False
        await wait_for(lambda: shows(busy=False), limit=30)
        assert (await http.get(url, headers=user.headers)).status_code == 200


async def test_the_busy_header_of_the_local_service_is_reported(
    live: LiveServer, http: httpx.AsyncClient, service: HoldingService, tmp_path: Path
) -> None:
    user, agent = await _agent(live, http, service.port, tmp_path, busy_header=True)
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device = await only_device(http, user)
        assert device["busy"] is False
        url = f"{API}/devices/{device['id']}/proxy/x"
        service.busy = True
        assert (await http.get(url, headers=user.headers)).status_code == 200

        async def busy() -> bool:
            return bool((await only_device(http, user))["busy"])

        await wait_for(busy, limit=30)
        _busy(await http.get(url, headers=user.headers), "busy")
        shown = await http.get(f"{API}/devices/{device['id']}", headers=user.headers)
        assert shown.json()["busy"] is True


async def test_the_status_report_stores_busy_and_refuses_a_non_boolean(
    live: LiveServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    paired = await http.post(
        f"{API}/agent/pair",
        json={"pairing_token": token, "serial_number": "SN-B", "device_type": "kl720", "name": "b"},
    )
    session = {"Authorization": f"Bearer {paired.json()['session_token']}"}
    ok = await http.post(
        f"{API}/agent/status", json={"usb_status": "online", "busy": True}, headers=session
    )
    assert ok.status_code == 204
    assert (await only_device(http, user))["busy"] is True
    bad = await http.post(
        f"{API}/agent/status", json={"usb_status": "online", "busy": "very"}, headers=session
    )
    assert bad.status_code == 422
    omitted = await http.post(
        f"{API}/agent/status", json={"usb_status": "offline"}, headers=session
    )
    assert omitted.status_code == 204
    device = await only_device(http, user)
    assert (device["status"], device["busy"]) == ("offline", True)  # busy unchanged when omitted
    assert json.dumps(device)  # serialisable as served
    uuid.UUID(str(device["id"]))
