"""Two real nodes behind a real nginx configured with docs/nginx.conf, the file users get
(and behind HAProxy with docs/haproxy.cfg, the documented alternative).

The agent connects through the balancer and lands on whichever node nginx picks; the
device is then reached through the balancer and through either node. Sessions and
login rate limits live in Redis, so they hold whichever node a request reaches; the
nodes trust the balancer's ``X-Forwarded-For`` (``VISIONA_FORWARDED_ALLOW_IPS``),
which nginx replaces, so a client cannot choose the address its attempts count on.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from testkit.device_service import device_app, pattern
from testkit.haproxy import DOC_CFG, HaproxyServer, balancer_cfg
from testkit.live import LiveServer, serve_app
from testkit.nginx import DOC_CONF, NginxServer, balancer_conf
from testkit.nodes import TOKEN, Balanced, cluster_env, running_nodes
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import PASSWORD, error_code, signup
from tests.support.deployments import (
    Received,
    answer,
    deploy,
    deployments_of,
    device_and_model,
    read_request,
)
from tests.support.devices import pairing_token
from tests.support.tunnel import (
    API,
    StreamHandler,
    connect_agent,
    forward_to,
    paired_agent_token,
    wait_for,
)
from visiona.agent.runner import EXIT_AUTH_REFUSED, Agent, AgentOptions
from visiona.cluster.forwarding import ORG_HEADER, TOKEN_HEADER, USER_HEADER
from visiona.yamux import Stream

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
PER_EMAIL = 3
PER_ADDRESS = 25


@pytest.fixture(scope="module")
def balanced(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[Balanced]:
    """Nodes A and B trusting the balancer, and nginx in front of both."""
    env = cluster_env(
        postgres,
        redis_server,
        forwarded_allow_ips="127.0.0.1",
        login_rate_limit=str(PER_EMAIL),
        login_rate_limit_per_address=str(PER_ADDRESS),
    )
    with running_nodes(env, "a", "b") as (a, b):
        lb = NginxServer([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        try:
            lb.start()
            yield Balanced(a, b, lb, env)
        finally:
            lb.cleanup()


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The device's local HTTP service on a loopback port."""
    async with serve_app(device_app()) as service:
        yield service.port


def test_operations_md_shows_the_nginx_file_the_tests_run_verbatim() -> None:
    shown = re.findall(r"```nginx\n(.*?)```", OPERATIONS.read_text(), flags=re.DOTALL)
    assert DOC_CONF.read_text() in shown


def test_the_test_configuration_changes_only_the_listen_and_upstream_lines() -> None:
    documented = DOC_CONF.read_text().splitlines()
    generated = balancer_conf(["127.0.0.1:1111", "127.0.0.1:2222"], 3333).splitlines()
    changed = [line for line in generated if line not in documented]
    assert changed == [
        "    server 127.0.0.1:1111 max_fails=1 fail_timeout=5s;",
        "    server 127.0.0.1:2222 max_fails=1 fail_timeout=5s;",
        "    listen 127.0.0.1:3333;",
    ]
    dropped = [line for line in documented if line not in generated]
    assert dropped == [
        "    server 10.0.0.5:8080 max_fails=1 fail_timeout=5s;",
        "    server 10.0.0.6:8080 max_fails=1 fail_timeout=5s;",
        "    listen 80;",
    ]


async def test_a_device_tunnelled_through_the_balancer_answers_through_every_node_and_it(
    balanced: Balanced, device_port: int
) -> None:
    a, b, lb = balanced.a, balanced.b, balanced.lb
    async with httpx.AsyncClient(base_url=lb.url, timeout=30) as via_lb:
        user = await signup(via_lb)
        device_id, token = await paired_agent_token(via_lb, user)
        echo = f"{API}/devices/{device_id}/proxy/echo/x"
        async with connect_agent(cast("LiveServer", lb), token, forward_to(device_port)):

            async def leased() -> bool:
                return await balanced.owner(device_id) is not None

            await wait_for(leased)
            assert await balanced.owner(device_id) in {"node-a", "node-b"}
            for base in (a.url, b.url, lb.url):
                async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                    answer = await client.get(echo, headers=user.headers)
                    assert answer.status_code == 200, (base, answer.text)
                    assert answer.json()["path"] == "/echo/x"
            # A forged X-Forwarded-For is replaced by the balancer: the device sees the
            # balancer's client (loopback here), whichever node forwarded it.
            forged = await via_lb.get(
                echo, headers={**user.headers, "X-Forwarded-For": "198.51.100.7"}
            )
            headers = {k.lower(): v for k, v in forged.json()["headers"]}
            assert headers["x-forwarded-for"] == "127.0.0.1"
            # Bodies stream through nginx and any forwarding node, both ways.
            size = 3 * 1024 * 1024
            big = await via_lb.get(
                f"{API}/devices/{device_id}/proxy/bytes/{size}", headers=user.headers
            )
            assert big.status_code == 200
            assert big.content == pattern(size)
            sent = pattern(2 * 1024 * 1024)
            upload = await via_lb.post(
                f"{API}/devices/{device_id}/proxy/upload", headers=user.headers, content=sent
            )
            assert upload.status_code == 201, upload.text
            assert upload.json() == {"sha256": hashlib.sha256(sent).hexdigest(), "size": len(sent)}


async def test_a_session_opened_through_the_balancer_holds_on_every_node_until_logout(
    balanced: Balanced,
) -> None:
    a, b, lb = balanced.a, balanced.b, balanced.lb
    async with (
        httpx.AsyncClient(base_url=lb.url, timeout=30) as via_lb,
        httpx.AsyncClient(base_url=a.url, timeout=30) as via_a,
        httpx.AsyncClient(base_url=b.url, timeout=30) as via_b,
    ):
        user = await signup(via_lb)
        for client in (via_a, via_b, via_lb):
            me = await client.get(f"{API}/auth/me", headers=user.headers)
            assert me.status_code == 200, me.text
            assert me.json()["id"] == user.id
        out = await via_a.post(f"{API}/auth/logout", headers=user.headers)
        assert out.status_code == 204
        for client in (via_b, via_lb):
            gone = await client.get(f"{API}/auth/me", headers=user.headers)
            assert gone.status_code == 401
            assert error_code(gone) == "unauthorized"


async def _login(client: httpx.AsyncClient, email: str, **headers: str) -> httpx.Response:
    return await client.post(
        f"{API}/auth/login", json={"email": email, "password": "wrong " + PASSWORD}, headers=headers
    )


async def test_the_per_email_login_limit_counts_attempts_on_every_node(
    balanced: Balanced,
) -> None:
    a, b, lb = balanced.a, balanced.b, balanced.lb
    async with (
        httpx.AsyncClient(base_url=lb.url, timeout=30) as via_lb,
        httpx.AsyncClient(base_url=a.url, timeout=30) as via_a,
        httpx.AsyncClient(base_url=b.url, timeout=30) as via_b,
    ):
        email = f"limited-{uuid.uuid4().hex[:10]}@example.com"
        created = await via_lb.post(
            f"{API}/auth/register", json={"email": email, "password": PASSWORD, "name": "T"}
        )
        assert created.status_code == 201
        answers = [(await _login(c, email)).status_code for c in (via_a, via_b, via_a)]
        assert answers == [401] * PER_EMAIL
        for client in (via_b, via_lb, via_a):
            limited = await _login(client, email)
            assert limited.status_code == 429
            assert error_code(limited) == "rate_limited"


async def test_the_per_address_limit_is_shared_and_the_balancer_sets_the_address(
    balanced: Balanced,
) -> None:
    a, b, lb = balanced.a, balanced.b, balanced.lb
    # The nodes trust loopback (the balancer's address here): a direct request from it
    # that names a client address counts on that address, on both nodes alike.
    address = f"198.18.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"
    async with (
        httpx.AsyncClient(base_url=lb.url, timeout=30) as via_lb,
        httpx.AsyncClient(base_url=a.url, timeout=30) as via_a,
        httpx.AsyncClient(base_url=b.url, timeout=30) as via_b,
    ):
        for i in range(PER_ADDRESS):
            client = via_a if i % 2 else via_b
            answer = await _login(
                client, f"nobody-{uuid.uuid4().hex}@example.com", **{"X-Forwarded-For": address}
            )
            assert answer.status_code == 401, (i, answer.text)
        for client in (via_a, via_b):
            limited = await _login(
                client, f"nobody-{uuid.uuid4().hex}@example.com", **{"X-Forwarded-For": address}
            )
            assert limited.status_code == 429
        # Through nginx the same forged header is replaced: the attempt counts on the
        # balancer's client, not on the exhausted address.
        through = await _login(
            via_lb, f"nobody-{uuid.uuid4().hex}@example.com", **{"X-Forwarded-For": address}
        )
        assert through.status_code == 401


async def test_the_internal_route_answers_401_without_the_token_and_404_at_the_balancer(
    balanced: Balanced, device_port: int
) -> None:
    a, b, lb = balanced.a, balanced.b, balanced.lb
    async with httpx.AsyncClient(base_url=lb.url, timeout=30) as via_lb:
        user = await signup(via_lb)
        device_id, token = await paired_agent_token(via_lb, user)
        internal = f"/internal/v1/devices/{device_id}/proxy/echo/x"
        async with connect_agent(cast("LiveServer", lb), token, forward_to(device_port)):

            async def leased() -> bool:
                return await balanced.owner(device_id) is not None

            await wait_for(leased)
            holder = a if await balanced.owner(device_id) == "node-a" else b
            good: dict[str, Any] = {
                TOKEN_HEADER: TOKEN,
                USER_HEADER: user.id,
                ORG_HEADER: user.org_id,
            }
            async with httpx.AsyncClient(base_url=holder.url, timeout=30) as direct:
                assert (await direct.get(internal, headers=good)).status_code == 200
                missing = await direct.get(
                    internal, headers={USER_HEADER: user.id, ORG_HEADER: user.org_id}
                )
                assert missing.status_code == 401
                forged = {**good, TOKEN_HEADER: TOKEN[:-1] + "X"}
                assert (await direct.get(internal, headers=forged)).status_code == 401
            # Even with the right token, the balancer does not pass /internal/ on.
            blocked = await via_lb.get(internal, headers=good)
            assert blocked.status_code == 404
            assert error_code(blocked) == "not_found"


def receiving(received: Received, status: int = 200) -> StreamHandler:
    """A fake agent that takes the model transfer and answers ``status``."""

    async def handler(stream: Stream) -> None:
        await read_request(stream, received)
        answer(stream, status, b'{"stored": true}')

    return handler


async def test_a_deployment_requested_on_the_other_node_reaches_the_agent_on_the_owner(
    balanced: Balanced,
) -> None:
    a, b, lb = balanced.a, balanced.b, balanced.lb
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as via_a:
        user = await signup(via_a)
        device_id, token, model_id, content = await device_and_model(via_a, user, 300_000)
        received = Received()
        async with connect_agent(cast("LiveServer", b), token, receiving(received)):

            async def leased() -> bool:
                return await balanced.owner(device_id) == "node-b"

            await wait_for(leased)
            done = await deploy(via_a, user, device_id, model_id)
            assert done.status_code == 201, done.text
            assert done.json()["status"] == "succeeded"
            assert received.target == f"/visiona/models/{model_id}"
            assert received.sha256 == hashlib.sha256(content).hexdigest()
            # Through the balancer too, whichever node nginx picks.
            async with httpx.AsyncClient(base_url=lb.url, timeout=60) as via_lb:
                again = await deploy(via_lb, user, device_id, model_id)
                assert again.status_code == 201, again.text
                records = await deployments_of(via_lb, user, device_id)
            assert [r["status"] for r in records] == ["succeeded", "succeeded"]


async def test_a_deployment_the_owner_refuses_is_failed_with_the_agents_reason(
    balanced: Balanced,
) -> None:
    a, b = balanced.a, balanced.b
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as via_a:
        user = await signup(via_a)
        device_id, token, model_id, _ = await device_and_model(via_a, user, 10_000)
        received = Received()
        async with connect_agent(cast("LiveServer", b), token, receiving(received, 422)):

            async def leased() -> bool:
                return await balanced.owner(device_id) == "node-b"

            await wait_for(leased)
            refused = await deploy(via_a, user, device_id, model_id)
        assert refused.status_code == 502, refused.text
        assert error_code(refused) == "deployment_failed"
        record = refused.json()["error"]["deployment"]
        assert record["status"] == "failed"
        assert record["error"].startswith("the agent answered 422")


async def test_a_deployment_to_a_device_no_node_holds_answers_device_offline(
    balanced: Balanced,
) -> None:
    async with httpx.AsyncClient(base_url=balanced.lb.url, timeout=60) as via_lb:
        user = await signup(via_lb)
        device_id, _, model_id, _ = await device_and_model(via_lb, user, 10_000)
        offline = await deploy(via_lb, user, device_id, model_id)
        assert offline.status_code == 502
        assert error_code(offline) == "device_offline"
        assert offline.json()["error"]["deployment"]["status"] == "failed"


async def test_the_internal_transfer_route_never_forwards_a_miss(balanced: Balanced) -> None:
    a, b = balanced.a, balanced.b
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as via_a:
        user = await signup(via_a)
        device_id, token, model_id, _ = await device_and_model(via_a, user, 10_000)
        # A failed record to hand over (the device is offline when it is created).
        record = (await deploy(via_a, user, device_id, model_id)).json()["error"]["deployment"]
        body = {
            "model_id": model_id,
            "storage_key": "k",
            "sha256": "0" * 64,
            "size": 1,
            "chip": "kl520",
        }
        transfer = f"/internal/v1/deployments/{record['id']}/transfer"
        good = {TOKEN_HEADER: TOKEN, USER_HEADER: user.id, ORG_HEADER: user.org_id}
        assert (await via_a.post(transfer, json=body)).status_code == 401
        async with connect_agent(cast("LiveServer", b), token, receiving(Received())):

            async def leased() -> bool:
                return await balanced.owner(device_id) == "node-b"

            await wait_for(leased)
            # A holds no tunnel of the device: offline, although the registry names B.
            miss = await via_a.post(transfer, json=body, headers=good)
            assert miss.status_code == 502
            assert error_code(miss) == "device_offline"
            stranger = await signup(via_a)
            other = await via_a.post(
                transfer,
                json=body,
                headers={**good, USER_HEADER: stranger.id, ORG_HEADER: stranger.org_id},
            )
            assert other.status_code == 404


async def test_unpair_on_one_node_makes_the_real_agent_on_the_other_exit_3(
    balanced: Balanced, device_port: int, tmp_path: Path
) -> None:
    a, b = balanced.a, balanced.b
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
        user = await signup(via_a)
        options = AgentOptions(
            server=b.url,
            forward_host="127.0.0.1",
            forward_port=device_port,
            session_file=tmp_path / "session.json",
            pairing_token=(await pairing_token(via_a, user))["token"],
            serial_number=f"SN-{uuid.uuid4().hex[:10]}",
            usb_poll_interval=0.2,
        )
        agent = Agent(options, stable_after=0.0)
        running = asyncio.create_task(agent.run(asyncio.Event()))
        try:
            await asyncio.wait_for(agent.connected.wait(), 60)
            device_id = (await via_a.get(f"{API}/devices", headers=user.headers)).json()["items"][
                0
            ]["id"]

            async def leased() -> bool:
                return await balanced.owner(device_id) == "node-b"

            await wait_for(leased)
            gone = await via_a.delete(f"{API}/devices/{device_id}", headers=user.headers)
            assert gone.status_code == 204
            # B closes the tunnel (4401 revoked); the agent's reconnect is refused: exit 3.
            assert await asyncio.wait_for(running, 60) == EXIT_AUTH_REFUSED
        finally:
            if not running.done():
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)


@pytest.fixture(scope="module")
def haproxy(balanced: Balanced) -> Iterator[HaproxyServer]:
    """HAProxy with docs/haproxy.cfg in front of the same two nodes."""
    lb = HaproxyServer([f"127.0.0.1:{balanced.a.port}", f"127.0.0.1:{balanced.b.port}"])
    try:
        lb.start()
        yield lb
    finally:
        lb.cleanup()


def test_operations_md_shows_the_haproxy_file_the_tests_run_verbatim() -> None:
    shown = re.findall(r"```haproxy\n(.*?)```", OPERATIONS.read_text(), flags=re.DOTALL)
    assert DOC_CFG.read_text() in shown
    generated = balancer_cfg(["127.0.0.1:1111"], 3333).splitlines()
    changed = [line for line in generated if line not in DOC_CFG.read_text().splitlines()]
    assert changed == [
        "    bind 127.0.0.1:3333",
        "    server n0 127.0.0.1:1111 check inter 5s fall 2 rise 2",
    ]


async def test_through_haproxy_the_tunnel_the_proxy_and_the_internal_block_hold(
    balanced: Balanced, haproxy: HaproxyServer, device_port: int
) -> None:
    async with httpx.AsyncClient(base_url=haproxy.url, timeout=30) as via_ha:
        user = await signup(via_ha)
        device_id, token = await paired_agent_token(via_ha, user)
        echo = f"{API}/devices/{device_id}/proxy/echo/x"
        async with connect_agent(cast("LiveServer", haproxy), token, forward_to(device_port)):

            async def leased() -> bool:
                return await balanced.owner(device_id) is not None

            await wait_for(leased)
            for _ in range(4):  # leastconn: both nodes take some of them
                answer = await via_ha.get(
                    echo, headers={**user.headers, "X-Forwarded-For": "198.51.100.7"}
                )
                assert answer.status_code == 200, answer.text
                headers = {k.lower(): v for k, v in answer.json()["headers"]}
                assert headers["x-forwarded-for"] == "127.0.0.1"
            size = 3 * 1024 * 1024
            big = await via_ha.get(
                f"{API}/devices/{device_id}/proxy/bytes/{size}", headers=user.headers
            )
            assert big.content == pattern(size)
            sent = pattern(2 * 1024 * 1024)
            upload = await via_ha.post(
                f"{API}/devices/{device_id}/proxy/upload", headers=user.headers, content=sent
            )
            assert upload.json() == {"sha256": hashlib.sha256(sent).hexdigest(), "size": len(sent)}
            internal = f"/internal/v1/devices/{device_id}/proxy/echo/x"
            blocked = await via_ha.get(
                internal,
                headers={TOKEN_HEADER: TOKEN, USER_HEADER: user.id, ORG_HEADER: user.org_id},
            )
            assert blocked.status_code == 404
            assert error_code(blocked) == "not_found"


async def test_metrics_are_served_to_each_node_but_not_through_either_balancer(
    balanced: Balanced, haproxy: HaproxyServer
) -> None:
    for node in (balanced.a, balanced.b):
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as direct:
            assert (await direct.get("/metrics")).status_code == 200
    for front in (balanced.lb.url, haproxy.url):
        async with httpx.AsyncClient(base_url=front, timeout=30) as outside:
            blocked = await outside.get("/metrics")
            assert blocked.status_code == 404, front
            assert error_code(blocked) == "not_found"
            assert "visiona_" not in blocked.text
