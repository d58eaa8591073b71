"""A node killed (SIGKILL by pid) behind nginx: nothing it held stays stuck.

Every test starts its own two nodes and nginx (each test kills one node). The agent
is the real one (:class:`visiona.agent.runner.Agent`, in this process) pointed at the
balancer; deployments use test agents connected to the node that will die.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from testkit.live import LiveServer
from testkit.nginx import NginxServer
from testkit.nodes import Balanced, balanced_nodes
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import User, error_code, signup
from tests.support.deployments import (
    Received,
    deploy,
    deployments_of,
    device_and_model,
    read_request,
)
from tests.support.devices import pairing_token
from tests.support.tcp import EchoService, agent_dispatcher
from tests.support.tunnel import API, StreamHandler, connect_agent, paired_agent_token, wait_for
from visiona.agent.runner import Agent, AgentOptions
from visiona.deployments.delivery import OWNER_LOST
from visiona.deployments.recovery import NODE_LOST
from visiona.wire import CLOSE_FORWARD_UNREACHABLE
from visiona.yamux import Stream


@pytest.fixture
def cluster(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[Balanced]:
    """Nodes A and B and nginx in front, for one test."""
    with balanced_nodes(postgres, redis_server) as balanced:
        yield balanced


async def _agent_options(
    http: httpx.AsyncClient, user: User, lb: NginxServer, device_port: int, tmp_path: Path
) -> AgentOptions:
    """The real agent's options: the balancer as its server, a fresh pairing token."""
    return AgentOptions(
        server=lb.url,
        forward_host="127.0.0.1",
        forward_port=device_port,
        session_file=tmp_path / "session.json",
        pairing_token=(await pairing_token(http, user))["token"],
        serial_number=f"SN-{uuid.uuid4().hex[:10]}",
        usb_poll_interval=0.2,
    )


async def test_the_owner_killed_answers_502_quickly_then_the_agent_is_back_through_nginx(
    cluster: Balanced, device_port: int, tmp_path: Path
) -> None:
    lb = cluster.lb
    async with httpx.AsyncClient(base_url=lb.url, timeout=30) as via_lb:
        user = await signup(via_lb)
        agent = Agent(
            await _agent_options(via_lb, user, lb, device_port, tmp_path), stable_after=0.0
        )
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        try:
            await asyncio.wait_for(agent.connected.wait(), 60)
            devices = (await via_lb.get(f"{API}/devices", headers=user.headers)).json()
            device_id = devices["items"][0]["id"]
            echo = f"{API}/devices/{device_id}/proxy/echo/x"

            async def leased() -> bool:
                return await cluster.owner(device_id) is not None

            await wait_for(leased)
            holder, other = (
                (cluster.a, cluster.b)
                if await cluster.owner(device_id) == "node-a"
                else (cluster.b, cluster.a)
            )
            assert (await via_lb.get(echo, headers=user.headers)).status_code == 200
            holder.kill()
            async with httpx.AsyncClient(base_url=other.url, timeout=30) as via_other:
                # The survivor cannot connect to the dead node and answers at once: the
                # registry still names the dead node, its lease has not expired yet.
                dead = await via_other.get(echo, headers=user.headers)
                assert dead.status_code == 502
                assert error_code(dead) == "device_offline"
                assert await cluster.owner(device_id) == f"node-{holder.name}"

                # The balancer skips the dead node; the agent reconnects through it.
                async def back() -> bool:
                    answer = await via_lb.get(echo, headers=user.headers)
                    return answer.status_code == 200

                await wait_for(back, limit=60)
                assert await cluster.owner(device_id) == f"node-{other.name}"
                assert (await via_other.get(echo, headers=user.headers)).status_code == 200

                async def online() -> bool:  # the new tunnel's status is written in a batch
                    shown = await via_other.get(f"{API}/devices/{device_id}", headers=user.headers)
                    return bool(shown.json()["remote_status"] == "online")

                await wait_for(online)
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)


def silent_receiver(received: Received, got: asyncio.Event) -> StreamHandler:
    """A test agent that takes the model file and never answers (the node dies first)."""

    async def handler(stream: Stream) -> None:
        await read_request(stream, received)
        got.set()
        await asyncio.Event().wait()

    return handler


async def test_transfers_the_killed_node_ran_are_failed_and_none_stays_transferring(
    cluster: Balanced,
) -> None:
    a, b = cluster.a, cluster.b
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=60) as via_a,
        httpx.AsyncClient(base_url=b.url, timeout=60) as via_b,
    ):
        user = await signup(via_a)
        forwarded_device, token_1, model_id, _ = await device_and_model(via_a, user, 50_000)
        direct_device, token_2, _, _ = await device_and_model(via_a, user, 60_000)
        got_1, got_2 = asyncio.Event(), asyncio.Event()
        async with (
            connect_agent(cast("LiveServer", b), token_1, silent_receiver(Received(), got_1)),
            connect_agent(cast("LiveServer", b), token_2, silent_receiver(Received(), got_2)),
        ):

            async def leased() -> bool:
                owners = [await cluster.owner(d) for d in (forwarded_device, direct_device)]
                return owners == ["node-b", "node-b"]

            await wait_for(leased)
            # One requested on A (handed to B), one on B itself (only B knows it runs).
            on_a = asyncio.create_task(deploy(via_a, user, forwarded_device, model_id))
            on_b = asyncio.create_task(deploy(via_b, user, direct_device, model_id))
            await asyncio.wait_for(asyncio.gather(got_1.wait(), got_2.wait()), 30)
            for device_id in (forwarded_device, direct_device):
                records = await deployments_of(via_a, user, device_id)
                assert [r["status"] for r in records] == ["transferring"]
            b.kill()
            lost = await on_a
            assert lost.status_code == 502, lost.text
            assert error_code(lost) == "deployment_failed"
            assert lost.json()["error"]["deployment"]["error"] == OWNER_LOST
            with pytest.raises(httpx.TransportError):
                await on_b

        # Nobody was waiting on B's own transfer: A's sweep notices its lease expired.
        async def swept() -> bool:
            records = await deployments_of(via_a, user, direct_device)
            return bool(records[0]["status"] == "failed")

        await wait_for(swept, limit=60)
        record = (await deployments_of(via_a, user, direct_device))[0]
        assert record["error"] == NODE_LOST
        assert record["finished_at"] is not None


async def test_a_drained_node_hands_its_agent_and_its_traffic_to_the_other_through_nginx(
    cluster: Balanced, device_port: int, tmp_path: Path
) -> None:
    # A graceful stop (SIGTERM, as when draining a node for an upgrade).
    lb = cluster.lb
    async with httpx.AsyncClient(base_url=lb.url, timeout=30) as via_lb:
        user = await signup(via_lb)
        agent = Agent(
            await _agent_options(via_lb, user, lb, device_port, tmp_path), stable_after=0.0
        )
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        try:
            await asyncio.wait_for(agent.connected.wait(), 60)
            device_id = (await via_lb.get(f"{API}/devices", headers=user.headers)).json()["items"][
                0
            ]["id"]
            echo = f"{API}/devices/{device_id}/proxy/echo/x"

            async def leased() -> bool:
                return await cluster.owner(device_id) is not None

            await wait_for(leased)
            holder, other = (
                (cluster.a, cluster.b)
                if await cluster.owner(device_id) == "node-a"
                else (cluster.b, cluster.a)
            )
            await asyncio.to_thread(holder.stop)
            # uvicorn ends by re-raising SIGTERM; the log says the shutdown completed.
            assert "Application shutdown complete." in holder.log.read_text()

            async def back() -> bool:
                return (await via_lb.get(echo, headers=user.headers)).status_code == 200

            await wait_for(back, limit=60)
            assert await cluster.owner(device_id) == f"node-{other.name}"
            for _ in range(4):  # every request now reaches the remaining node
                me = await via_lb.get(f"{API}/auth/me", headers=user.headers)
                assert me.status_code == 200
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)


async def test_a_forward_carried_to_the_owner_ends_promptly_when_the_owner_is_killed(
    cluster: Balanced,
) -> None:
    a, b = cluster.a, cluster.b
    echo = EchoService()
    await echo.start()
    try:
        async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
            user = await signup(via_a)
            device_id, token = await paired_agent_token(via_a, user)
            async with connect_agent(cast("LiveServer", b), token, agent_dispatcher([echo.port])):

                async def leased() -> bool:
                    return await cluster.owner(device_id) == "node-b"

                await wait_for(leased, limit=30)
                url = f"ws://127.0.0.1:{a.port}{API}/devices/{device_id}/tcp/{echo.port}"
                async with connect(url, additional_headers=user.headers) as ws:
                    assert await ws.recv() == b"hello\n"  # carried from B through A
                    await ws.send(b"ping")
                    assert await ws.recv() == b"ping"
                    b.kill()
                    async with asyncio.timeout(10):  # the link's loss ends it, no timer
                        with contextlib.suppress(ConnectionClosed):
                            while True:
                                await ws.recv()
                    rcvd = ws.protocol.close_rcvd
                assert rcvd is not None
                assert rcvd.code == CLOSE_FORWARD_UNREACHABLE
    finally:
        await echo.stop()
