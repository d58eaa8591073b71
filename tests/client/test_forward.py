"""``visiona forward`` with real processes: a real sshd behind the agent, the real ``ssh``
and ``scp`` through ``visiona forward --stdio``, and the listener mode.

The server runs in the test's event loop (uvicorn), the agent too (the real
``visiona.agent`` code); ``visiona forward`` runs as a subprocess (for ssh: as its
ProxyCommand), with the credentials ``visiona login`` would have saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from testkit.live import LiveServer
from testkit.sshd import SshServer, proxy_command, run_sshd
from tests.support.agent import running
from tests.support.api import User
from tests.support.tcp import EchoService, tcp_agent
from tests.support.tunnel import API, wait_for
from visiona.agent.runner import Agent
from visiona.client.config import Credentials, save_credentials
from visiona.client.errors import ClientError
from visiona.client.forward import parse_spec, resolve_device
from visiona.tunnel.dependencies import HUB
from visiona.wire import CLOSE_KEEPALIVE

BIG = 64 * 1024 * 1024


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """These tests are about processes and bytes, not the database: SQLite only."""
    return str(request.param)


@pytest.fixture
async def sshd(tmp_path: Path) -> AsyncIterator[SshServer]:
    """A real OpenSSH server on a free loopback port."""
    async with run_sshd(tmp_path / "sshd") as server:
        yield server


@pytest.fixture
async def echo() -> AsyncIterator[EchoService]:
    """A TCP echo service."""
    service = EchoService()
    await service.start()
    yield service
    await service.stop()


@contextlib.asynccontextmanager
async def _device(
    live: LiveServer,
    http: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ports: list[int | str],
) -> AsyncIterator[tuple[User, str, Agent]]:
    """A paired device whose agent allows ``ports``, and the client's saved login."""
    user, agent = await tcp_agent(live, http, tmp_path, ports)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "client-config"))
    monkeypatch.delenv("VISIONA_SERVER", raising=False)
    save_credentials(Credentials(server=live.url, token=user.token, email=user.email))
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), 30)

        async def reported() -> bool:
            items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
            return bool(items) and items[0]["tcp_ports"] is not None

        await wait_for(reported)
        items = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
        yield user, str(items[0]["id"]), agent


def _proxy(port: int) -> str:
    return proxy_command(sys.executable, ["-m", "visiona", "forward", "--stdio", "%h", str(port)])


async def _run(*command: str, limit: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def test_ssh_runs_a_command_and_scp_copies_64_mib_through_the_forward(
    live: LiveServer,
    http: httpx.AsyncClient,
    sshd: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _device(live, http, tmp_path, monkeypatch, [sshd.port]) as (_, device_id, _a):
        code, out, err = await _run(*sshd.ssh(device_id, _proxy(sshd.port), "echo", "ok"))
        assert (code, out) == (0, "ok\n"), err
        assert sshd.connections() == 1

        source = tmp_path / "big.bin"
        source.write_bytes(os.urandom(BIG))
        target = tmp_path / "copied.bin"
        code, _, err = await _run(*sshd.scp(device_id, _proxy(sshd.port), source, target))
        assert code == 0, err
        assert target.stat().st_size == BIG
        assert hashlib.sha256(target.read_bytes()).digest() == (
            hashlib.sha256(source.read_bytes()).digest()
        )


async def test_a_port_the_agent_does_not_allow_is_a_clear_error_and_sshd_sees_nothing(
    live: LiveServer,
    http: httpx.AsyncClient,
    sshd: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = sshd.port + 1 if sshd.port < 65535 else 1
    async with _device(live, http, tmp_path, monkeypatch, [other]) as (_, device_id, _a):
        code, out, err = await _run(*sshd.ssh(device_id, _proxy(sshd.port), "echo", "ok"))
        assert code != 0
        assert out == ""
        assert f"does not allow port {sshd.port}" in err
        assert "port_not_allowed" in err
        assert sshd.connections() == 0


async def test_unpairing_ends_a_live_ssh_session_within_a_second(
    live: LiveServer,
    http: httpx.AsyncClient,
    sshd: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _device(live, http, tmp_path, monkeypatch, [sshd.port]) as (user, device_id, _a):
        proc = await asyncio.create_subprocess_exec(
            *sshd.ssh(device_id, _proxy(sshd.port), "echo started; exec sleep 600"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"started\n"
            response = await http.delete(f"{API}/devices/{device_id}", headers=user.headers)
            assert response.status_code == 204
            async with asyncio.timeout(1.0):  # the bound: within a second
                line = await proc.stderr.readline()
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        assert b"the device was unpaired" in line


async def _listen(device: str, spec: str) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "visiona", "forward", device, spec,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
    found = re.search(r"127\.0\.0\.1:(\d+) → device", line)
    assert found, line
    return proc, int(found.group(1))


async def _exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    data = await reader.read()
    writer.close()
    return data


async def test_the_listener_carries_each_connection_and_stops_cleanly_on_ctrl_c(
    live: LiveServer,
    http: httpx.AsyncClient,
    echo: EchoService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _device(live, http, tmp_path, monkeypatch, [echo.port]) as (_, device_id, _a):
        # the device named by a unique prefix of its id; the local port chosen by the system
        proc, port = await _listen(device_id[:8], f"0:{echo.port}")
        try:
            answers = await asyncio.gather(*(_exchange(port, b"x%d" % i) for i in range(3)))
            assert sorted(answers) == sorted(b"hello\nx%dbye\n" % i for i in range(3))
            assert echo.connections == 3
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.stderr is not None
            rest = await asyncio.wait_for(proc.stderr.read(), 30)
            assert await proc.wait() == 0
        assert b"stopped" in rest
        assert b"Traceback" not in rest


async def test_a_dropped_tunnel_ends_the_affected_connections_with_a_message(
    live: LiveServer,
    http: httpx.AsyncClient,
    echo: EchoService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _device(live, http, tmp_path, monkeypatch, [echo.port]) as (_, device_id, _a):
        proc, port = await _listen(device_id, f"127.0.0.1:0:{echo.port}")
        assert proc.stderr is not None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await reader.readexactly(6) == b"hello\n"
            link = HUB.of(live.app).get(uuid.UUID(device_id))
            assert link is not None
            await link.close(CLOSE_KEEPALIVE, "keepalive timeout")  # as a lost agent
            assert await asyncio.wait_for(reader.read(), 30) == b""  # the connection ended
            writer.close()
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert b"ended: the device cannot be reached: the device's tunnel dropped" in line
            assert proc.returncode is None  # the listener goes on
        finally:
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_stdio_works_with_files_and_pipes_and_keeps_the_half_close(
    live: LiveServer,
    http: httpx.AsyncClient,
    echo: EchoService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The echo service answers "bye" only after our EOF: the half-close went through."""
    async with _device(live, http, tmp_path, monkeypatch, [echo.port]) as (_, device_id, _a):
        request = tmp_path / "request.bin"
        request.write_bytes(b"abc" * 100_000)
        answer = tmp_path / "answer.bin"
        command = [sys.executable, "-m", "visiona", "forward", "--stdio", device_id, str(echo.port)]
        with request.open("rb") as source, answer.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(*command, stdin=source, stdout=sink)
            assert await asyncio.wait_for(proc.wait(), 60) == 0
        assert answer.read_bytes() == b"hello\n" + request.read_bytes() + b"bye\n"
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(b"through pipes"), 60)
        assert (proc.returncode, out) == (0, b"hello\nthrough pipesbye\n")


async def test_the_listener_refuses_to_start_for_a_port_the_agent_does_not_allow(
    live: LiveServer,
    http: httpx.AsyncClient,
    echo: EchoService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _device(live, http, tmp_path, monkeypatch, [echo.port]) as (_, device_id, _a):
        other = echo.port + 1 if echo.port < 65535 else 1
        code, _, err = await _run(
            sys.executable, "-m", "visiona", "forward", device_id, f"0:{other}", limit=60
        )
        assert code == 1
        assert f"error: the device's agent does not allow port {other}" in err
        assert f"--allow-port {other}" in err


def test_the_forward_spec_and_device_names_are_parsed_strictly() -> None:
    assert parse_spec("2222:22") == ("127.0.0.1", 2222, 22)
    assert parse_spec("0.0.0.0:2222:22") == ("0.0.0.0", 2222, 22)  # noqa: S104 - parsing only
    assert parse_spec("[::1]:2222:22") == ("::1", 2222, 22)
    for bad in ("22", "x:22", "2222:0", "2222:65536", "70000:22"):
        with pytest.raises(ClientError):
            parse_spec(bad)
    devices = [
        {"id": "6f1c0000-0000-4000-8000-000000000001", "name": "lab"},
        {"id": "6f1d0000-0000-4000-8000-000000000002", "name": "desk"},
    ]
    assert resolve_device(devices, "lab") == devices[0]["id"]
    assert resolve_device(devices, "6f1d") == devices[1]["id"]
    with pytest.raises(ClientError, match="names 2 devices"):
        resolve_device(devices, "6f1")
    with pytest.raises(ClientError, match="no device"):
        resolve_device(devices, "garage")
