"""TCP forwards in a cluster of two real nodes: a forward asked of the node without the
device's tunnel is carried to the node holding it (one hop), bytes, half-close, close
codes and refusals unchanged; unpairing through either node ends it. And the real ssh
through ``visiona forward --stdio`` through nginx (docs/nginx.conf) in front of both."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from testkit.live import LiveServer
from testkit.nginx import NginxServer
from testkit.nodes import Balanced, Node, cluster_env, running_nodes
from testkit.servers import PostgresServer, RedisServer
from testkit.sshd import proxy_command, run_sshd
from tests.support.agent import agent_options, running
from tests.support.api import signup
from tests.support.apikeys import create_key, key_headers
from tests.support.devices import pairing_token
from tests.support.tcp import EchoService, agent_dispatcher
from tests.support.tunnel import API, connect_agent, paired_agent_token, wait_for
from visiona.agent.policy import build_policy
from visiona.agent.runner import Agent
from visiona.client.config import Credentials, save_credentials


@pytest.fixture(scope="module")
def balanced(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[Balanced]:
    """Nodes A and B, and nginx in front of both."""
    env = cluster_env(postgres, redis_server, forwarded_allow_ips="127.0.0.1")
    with running_nodes(env, "a", "b") as (a, b):
        lb = NginxServer([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        try:
            lb.start()
            yield Balanced(a, b, lb, env)
        finally:
            lb.cleanup()


@pytest.fixture
def nodes(balanced: Balanced) -> list[Node]:
    """Nodes A and B themselves."""
    return [balanced.a, balanced.b]


def _ws(node: Node, device_id: str, port: int) -> str:
    return f"ws://127.0.0.1:{node.port}{API}/devices/{device_id}/tcp/{port}"


async def _closed_with(ws: ClientConnection) -> tuple[int, str]:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()
    rcvd = ws.protocol.close_rcvd
    assert rcvd is not None
    return rcvd.code, rcvd.reason


async def test_a_forward_asked_of_the_other_node_is_carried_to_the_owner(
    nodes: list[Node],
) -> None:
    a, b = nodes
    echo = EchoService()
    await echo.start()
    try:
        async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
            user = await signup(via_a)
            device_id, token = await paired_agent_token(via_a, user)
            # the agent's own stream handling on B; it never reported ports (older agent)
            async with connect_agent(cast("LiveServer", b), token, agent_dispatcher([echo.port])):

                async def online() -> bool:
                    got = await via_a.get(f"{API}/devices/{device_id}", headers=user.headers)
                    return bool(got.json()["remote_status"] == "online")

                await wait_for(online, limit=30)
                payload = bytes(range(256)) * 4096
                for node in (b, a):  # the owner itself, then the hop
                    async with connect(
                        _ws(node, device_id, echo.port),
                        additional_headers=user.headers,
                        max_size=None,
                    ) as ws:
                        await ws.send(payload)
                        await ws.send(b"")  # half-close through the hop
                        received = bytearray()
                        while chunk := await ws.recv():
                            assert isinstance(chunk, bytes)
                            received += chunk
                        assert bytes(received) == b"hello\n" + payload + b"bye\n"
                        assert (await _closed_with(ws))[0] == 1000
                assert echo.connections == 2

                # the agent's refusal comes back through the hop as it was
                async with connect(
                    _ws(a, device_id, echo.port + 1), additional_headers=user.headers
                ) as ws:
                    code, reason = await _closed_with(ws)
                assert code == 4403
                assert "does not allow port" in reason

                # another user's device: 404 from the node asked, nothing hops
                other = await signup(via_a)
                with pytest.raises(InvalidStatus) as info:
                    async with connect(
                        _ws(a, device_id, echo.port), additional_headers=other.headers
                    ):
                        pass
                assert info.value.response.status_code == 404

                # unpairing through the node asked ends the forward held on the owner
                async with connect(
                    _ws(a, device_id, echo.port), additional_headers=user.headers
                ) as ws:
                    assert await ws.recv() == b"hello\n"
                    gone = await via_a.delete(f"{API}/devices/{device_id}", headers=user.headers)
                    assert gone.status_code == 204
                    async with asyncio.timeout(5):
                        code, reason = await _closed_with(ws)
                assert code == 4401
    finally:
        await echo.stop()


async def test_a_forward_hopped_with_an_api_key_is_audited_as_the_key(
    nodes: list[Node],
) -> None:
    a, b = nodes
    echo = EchoService()
    await echo.start()
    try:
        async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
            user = await signup(via_a)
            key = await create_key(via_a, user, ["proxy"])
            device_id, token = await paired_agent_token(via_a, user)
            async with connect_agent(cast("LiveServer", b), token, agent_dispatcher([echo.port])):

                async def online() -> bool:
                    got = await via_a.get(f"{API}/devices/{device_id}", headers=user.headers)
                    return bool(got.json()["remote_status"] == "online")

                await wait_for(online, limit=30)
                async with connect(  # asked of A, carried to B which holds the tunnel
                    _ws(a, device_id, echo.port), additional_headers=key_headers(key["key"])
                ) as ws:
                    assert await ws.recv() == b"hello\n"
                    await ws.send(b"")

                async def trail(action: str) -> list[dict[str, object]]:
                    got = await via_a.get(
                        f"{API}/devices/{device_id}/audit-events",
                        params={"action": action},
                        headers=user.headers,
                    )
                    items: list[dict[str, object]] = got.json()["items"]
                    return items

                async def closed() -> bool:
                    return len(await trail("forward.closed")) == 1

                await wait_for(closed, limit=30)
                for action in ("forward.opened", "forward.closed"):
                    (event,) = await trail(action)
                    assert (event["actor_type"], event["actor_id"]) == ("api_key", key["id"])
    finally:
        await echo.stop()


async def test_the_internal_forward_route_wants_the_internal_token(nodes: list[Node]) -> None:
    a, _ = nodes
    url = f"ws://127.0.0.1:{a.port}/internal/v1/devices/00000000-0000-4000-8000-000000000001/tcp/22"
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers={"x-visiona-internal-token": "wrong"}):
            pass
    assert info.value.response.status_code == 401
    assert json.loads(info.value.response.body or b"{}")["error"]["code"] == "unauthorized"


async def test_ssh_through_nginx_reaches_the_device_whichever_node_it_lands_on(
    balanced: Balanced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lb = balanced.lb
    async with (
        run_sshd(tmp_path / "sshd") as sshd,
        httpx.AsyncClient(base_url=lb.url, timeout=30) as via_lb,
    ):
        user = await signup(via_lb)
        token = (await pairing_token(via_lb, user))["token"]
        options = replace(
            agent_options(cast("LiveServer", balanced.b), 9, tmp_path / "s.json", token),
            policy=build_policy([], ports=[sshd.port]),
        )
        agent = Agent(options)  # on node B; nginx sends the forwards to A or B
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "client"))
        monkeypatch.delenv("VISIONA_SERVER", raising=False)
        save_credentials(Credentials(server=lb.url, token=user.token, email=user.email))
        async with running(agent):
            await asyncio.wait_for(agent.connected.wait(), 30)

            async def reported() -> bool:
                items = (await via_lb.get(f"{API}/devices", headers=user.headers)).json()["items"]
                return bool(items) and items[0]["tcp_ports"] == [sshd.port]

            await wait_for(reported, limit=30)
            device_id = str(
                (await via_lb.get(f"{API}/devices", headers=user.headers)).json()["items"][0]["id"]
            )
            proxy = proxy_command(
                sys.executable, ["-m", "visiona", "forward", "--stdio", "%h", str(sshd.port)]
            )
            for _ in range(2):  # nginx takes turns: one of the two lands on A and hops
                proc = await asyncio.create_subprocess_exec(
                    *sshd.ssh(device_id, proxy, "echo", "ok"),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(proc.communicate(), 120)
                assert (proc.returncode, out) == (0, b"ok\n"), err
            assert sshd.connections() == 2
