"""The agent's policy with the real agent and the real server: what reaches the local service.

The local service here is a raw TCP server that records each request line it gets
and answers with it, so a test sees exactly what the agent let through (and that a
refused request never arrived). Requests go through the cloud's proxy, and also
straight onto the tunnel (a stream opened by the server's own session) with
targets the cloud would never send: the agent must not rely on the cloud's checks.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.live import LiveServer
from tests.support.agent import agent_cli, agent_options, running
from tests.support.api import User, signup
from tests.support.audit import stored_events
from tests.support.deployments import deploy
from tests.support.devices import pairing_token
from tests.support.models import nef, uploaded
from tests.support.tunnel import API, wait_for
from visiona.agent.policy import build_policy
from visiona.agent.runner import Agent
from visiona.tunnel.dependencies import HUB


class RecordingService:
    """A local service that records request lines and answers ``200`` with the line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        self.lines.append(line)
        body = json.dumps({"line": line}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def service() -> AsyncIterator[RecordingService]:
    """The recording local service on a loopback port."""
    recording = RecordingService()
    await recording.start()
    yield recording
    await recording.stop()


async def _paired_agent(
    live: LiveServer,
    http: httpx.AsyncClient,
    port: int,
    tmp_path: Path,
    allow: list[str],
    *,
    deploy: bool = True,
    **overrides: Any,
) -> tuple[User, Agent]:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    options = replace(
        agent_options(live, port, tmp_path / "s.json", token),
        policy=build_policy(allow, deploy=deploy),
        **overrides,
    )
    return user, Agent(options)


async def _device_id(http: httpx.AsyncClient, user: User) -> str:
    items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
    return str(items[0]["id"])


async def _raw(live: LiveServer, device_id: str, request: bytes) -> bytes:
    """Send ``request`` on a new stream of the device's tunnel; the agent's whole answer."""
    link = HUB.of(live.app).get(uuid.UUID(device_id))
    assert link is not None
    stream = await link.session.open_stream()
    stream.write(request)
    stream.write_eof()
    answer = bytearray()
    while chunk := await stream.read(1 << 16):
        answer += chunk
    return bytes(answer)


async def test_allowed_requests_reach_the_service_and_refused_ones_get_the_agents_403(
    live: LiveServer, http: httpx.AsyncClient, service: RecordingService, tmp_path: Path
) -> None:
    user, agent = await _paired_agent(
        live, http, service.port, tmp_path, ["GET /v1/*", "POST /v1/inference"]
    )
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = await _device_id(http, user)
        proxy = f"{API}/devices/{device_id}/proxy"

        allowed = await http.get(f"{proxy}/v1/models?x=1", headers=user.headers)
        assert allowed.status_code == 200
        assert allowed.json() == {"line": "GET /v1/models?x=1 HTTP/1.1"}
        posted = await http.post(f"{proxy}/v1/inference", content=b"img", headers=user.headers)
        assert posted.json() == {"line": "POST /v1/inference HTTP/1.1"}

        for method, path in [("GET", "/admin"), ("DELETE", "/v1/models"), ("POST", "/v1/other")]:
            refused = await http.request(method, f"{proxy}{path}", headers=user.headers)
            assert refused.status_code == 403, (method, path)
            error = refused.json()["error"]
            assert error["code"] == "forbidden_by_agent"
            assert path in error["message"]
            assert refused.headers["x-visiona-refused"] == "policy"
        # a refused upload larger than the stream window is answered, its body never forwarded
        big = await http.post(
            f"{proxy}/v1/upload", content=b"x" * (24 * 1024 * 1024), headers=user.headers
        )
        assert big.status_code == 403
        assert big.json()["error"]["code"] == "forbidden_by_agent"
        allowed_after = await http.get(f"{proxy}/v1/after", headers=user.headers)
        assert allowed_after.json() == {"line": "GET /v1/after HTTP/1.1"}
        assert service.lines == [
            "GET /v1/models?x=1 HTTP/1.1",
            "POST /v1/inference HTTP/1.1",
            "GET /v1/after HTTP/1.1",
        ]

    # each refusal is in the audit trail: the user who sent it, the device, method + path
    events = await stored_events(live.app, action="proxy.forbidden_by_agent")
    assert [(e.detail["method"], e.detail["path"]) for e in events] == [
        ("GET", "/admin"),
        ("DELETE", "/v1/models"),
        ("POST", "/v1/other"),
        ("POST", "/v1/upload"),
    ]
    for event in events:
        assert (event.actor_type, str(event.actor_id)) == ("user", user.id)
        assert str(event.owner_id) == user.id
        assert (event.target_type, event.target_id) == ("device", device_id)
        assert str(event.device_id) == device_id
        assert event.client_addr == "127.0.0.1"
        assert event.request_id


async def test_the_agent_normalises_targets_the_cloud_would_never_send(
    live: LiveServer, http: httpx.AsyncClient, service: RecordingService, tmp_path: Path
) -> None:
    user, agent = await _paired_agent(live, http, service.port, tmp_path, ["GET /v1/*"])
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = await _device_id(http, user)
        for target in [
            b"/v1/../admin",
            b"/v1/%2e%2e/admin",
            b"/v1/%2E%2E/%2e%2e/etc/passwd",
            b"/..//v1/x",
            b"/v1/..%2f..%2fadmin",
            b"/visiona/models/x",
        ]:
            answer = await _raw(live, device_id, b"GET " + target + b" HTTP/1.1\r\nHost: d\r\n\r\n")
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 403 "), (target, answer)
            assert b"X-Visiona-Refused: policy" in head
            assert json.loads(body)["error"]["code"] == "forbidden_by_agent"
        # allowed after normalisation: the service sees the canonical target
        request = b"GET //v1/./a/%2e%2e/b%2Fc HTTP/1.1\r\nHost: d\r\n\r\n"
        answer = await _raw(live, device_id, request)
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"line": "GET /v1/b/c HTTP/1.1"}
        assert service.lines == ["GET /v1/b/c HTTP/1.1"]

        # and through the cloud, '//' collapsed and '%2e%2e' refused before the tunnel
        through = await http.get(f"{API}/devices/{device_id}/proxy//v1//x", headers=user.headers)
        assert through.json() == {"line": "GET /v1/x HTTP/1.1"}
        dotted = await http.get(
            f"{API}/devices/{device_id}/proxy/v1/%2e%2e/admin", headers=user.headers
        )
        assert dotted.status_code in {400, 403}
        assert service.lines == ["GET /v1/b/c HTTP/1.1", "GET /v1/x HTTP/1.1"]


async def test_without_rules_everything_is_forwarded_as_sent(
    live: LiveServer, http: httpx.AsyncClient, service: RecordingService, tmp_path: Path
) -> None:
    user, agent = await _paired_agent(live, http, service.port, tmp_path, [])
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = await _device_id(http, user)
        answer = await _raw(live, device_id, b"GET /any/%2e%2e//thing HTTP/1.1\r\n\r\n")
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
            "line": "GET /any/%2e%2e//thing HTTP/1.1"
        }


async def test_no_deploy_refuses_deployments_at_the_agent(
    live: LiveServer, http: httpx.AsyncClient, service: RecordingService, tmp_path: Path
) -> None:
    user, agent = await _paired_agent(
        live, http, service.port, tmp_path, [], deploy=False, models_dir=tmp_path / "models"
    )
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)
        device_id = await _device_id(http, user)
        model = await uploaded(http, user, nef(4096, seed=3), chip="kl720")
        response = await deploy(http, user, device_id, str(model["id"]))
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "deployment_failed"
        assert "403" in error["message"]
        assert "forbidden_by_agent" in error["message"]
        assert error["deployment"]["status"] == "failed"
        assert not (tmp_path / "models").exists()
        assert service.lines == []  # the deployment did not reach the local service either


async def test_cli_takes_rules_from_options_and_config_and_status_prints_them(
    live: LiveServer, http: httpx.AsyncClient, service: RecordingService, tmp_path: Path
) -> None:
    user = await signup(http)
    token = (await pairing_token(http, user))["token"]
    config = tmp_path / "agent.toml"
    config.write_text('allow = ["GET /v1/*"]\nallow_ports = [5900]\n')
    session = str(tmp_path / "s.json")
    proc = await agent_cli(
        "--server", live.url, "--token", token, "--forward", f"127.0.0.1:{service.port}",
        "--session-file", session, "--config", str(config),
        "--allow", "POST /v1/inference", "--no-deploy", "--allow-port", "22",
    )  # fmt: skip
    try:

        async def online() -> bool:
            items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
            return bool(items) and items[0]["remote_status"] == "online"

        await wait_for(online, limit=60)
        device_id = await _device_id(http, user)
        refused = await http.get(f"{API}/devices/{device_id}/proxy/admin", headers=user.headers)
        assert refused.status_code == 403
        posted = await http.post(
            f"{API}/devices/{device_id}/proxy/v1/inference", headers=user.headers
        )
        assert posted.status_code == 200

        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "visiona", "agent", "status", "--session-file", session,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(status.communicate(), 60)
        text = out.decode()
        assert "allow only:" in text
        assert "allow GET /v1/*" in text
        assert "allow POST /v1/inference" in text
        assert "deploy:   off (--no-deploy)" in text
        as_json = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "visiona", "agent", "status", "--session-file", session,
            "--json", stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(as_json.communicate(), 60)
        assert json.loads(out)["policy"] == {
            "allow": ["GET /v1/*", "POST /v1/inference"],
            "deploy": False,
            "allow_ports": [22, 5900],
        }
        assert "tcp:      ports 22, 5900 on 127.0.0.1 (--allow-port)" in text

        async def reported() -> bool:  # the agent tells the cloud its ports
            items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
            return bool(items[0]["tcp_ports"] == [22, 5900])

        await wait_for(reported, limit=30)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def test_cli_refuses_a_bad_rule_or_config_with_exit_2(tmp_path: Path) -> None:
    for extra in (
        ["--allow", "GET"],
        ["--config", str(tmp_path / "missing.toml")],
        ["--allow-port", "0"],
        ["--allow-port", "ssh"],
    ):
        proc = await agent_cli(
            "--server", "http://127.0.0.1:9", "--forward", "127.0.0.1:9",
            "--session-file", str(tmp_path / "s.json"), *extra,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2, stderr
        assert b"error:" in stderr
