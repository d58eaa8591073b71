"""The transfer through a real tunnel (uvicorn on loopback, a yamux agent) on both databases.

The agent here is the small test agent of tests/support/tunnel.py with a handler
per test, so each failure the cloud must survive (a refusal, a reset stream, a
dropped tunnel, no answer, a cancelled request) can be staged; the real
``visiona agent`` is exercised in tests/agent/test_deploy.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

import httpx

from testkit.live import LiveServer
from tests.support.api import signup
from tests.support.deployments import (
    Received,
    answer,
    deploy,
    deployments_of,
    device_and_model,
    read_request,
)
from tests.support.tunnel import connect_agent, wait_for
from visiona.deployments import service
from visiona.deployments.schemas import DeploymentStatus
from visiona.kit.runtime import Runtime
from visiona.models.dependencies import STORAGE
from visiona.tunnel.dependencies import HUB
from visiona.yamux import Stream

SIZE = 3 * 1024 * 1024 + 17  # several stream windows, not a multiple of any chunk size


def _runtime(live: LiveServer) -> Runtime:
    runtime: Runtime = live.app.state.runtime
    return runtime


async def _connected(live: LiveServer, device_id: str) -> None:
    async def up() -> bool:
        return HUB.of(live.app).get(uuid.UUID(device_id)) is not None

    await wait_for(up)


async def test_model_is_streamed_with_its_headers_and_the_record_succeeds(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token, model_id, content = await device_and_model(http, user, SIZE)
    received = Received()

    async def agent(stream: Stream) -> None:
        await read_request(stream, received)
        answer(stream, 200, json.dumps({"model_id": model_id}).encode())

    async with connect_agent(live, token, agent):
        await _connected(live, device_id)
        response = await deploy(http, user, device_id, model_id)
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["status"] == "succeeded"
    assert record["error"] is None
    assert record["finished_at"] is not None
    assert received.target == f"/visiona/models/{model_id}"
    assert received.headers["content-length"] == str(SIZE)
    assert received.headers["x-visiona-sha256"] == hashlib.sha256(content).hexdigest()
    assert received.headers["x-visiona-chip"] == "kl520"
    assert "authorization" not in received.headers
    assert bytes(received.body) == content
    assert await deployments_of(http, user, device_id) == [record]


def _failed(response: httpx.Response) -> dict[str, Any]:
    """A failed deployment is a 502 ``deployment_failed`` carrying its ``failed`` record."""
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "deployment_failed"
    record: dict[str, Any] = error["deployment"]
    assert record["status"] == "failed"
    assert error["message"] == record["error"]
    uuid.UUID(record["id"])
    return record


async def test_an_agent_refusal_fails_the_record_with_its_reason(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token, model_id, _ = await device_and_model(http, user)

    async def agent(stream: Stream) -> None:
        await read_request(stream, Received())
        body = {"error": {"code": "hook_failed", "message": "flash tool exited with 2"}}
        answer(stream, 500, json.dumps(body).encode())

    async with connect_agent(live, token, agent):
        await _connected(live, device_id)
        response = await deploy(http, user, device_id, model_id)
    record = _failed(response)
    assert record["error"] == "the agent answered 500: hook_failed: flash tool exited with 2"


async def test_a_stream_reset_mid_transfer_fails_the_record(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token, model_id, _ = await device_and_model(http, user, SIZE)

    async def agent(stream: Stream) -> None:
        await read_request(stream, Received(), body_limit=SIZE // 3)
        stream.reset()

    async with connect_agent(live, token, agent):
        await _connected(live, device_id)
        response = await deploy(http, user, device_id, model_id)
    record = _failed(response)
    assert "tunnel dropped during the transfer" in record["error"]


async def test_a_tunnel_dropped_mid_transfer_fails_the_record(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token, model_id, _ = await device_and_model(http, user, SIZE)
    half_way = asyncio.Event()

    async def agent(stream: Stream) -> None:
        await read_request(stream, Received(), body_limit=SIZE // 3)
        half_way.set()
        await asyncio.Event().wait()  # hold the stream; the tunnel goes away under it

    async with connect_agent(live, token, agent) as fake:
        await _connected(live, device_id)
        request = asyncio.create_task(deploy(http, user, device_id, model_id))
        await half_way.wait()
        await fake.ws.close()
        response = await request
    record = _failed(response)
    assert "tunnel" in record["error"]
    assert (await deployments_of(http, user, device_id))[0]["status"] == "failed"


async def test_an_agent_that_never_answers_fails_the_record(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token, model_id, _ = await device_and_model(http, user)

    async def agent(stream: Stream) -> None:
        await read_request(stream, Received())
        await asyncio.Event().wait()

    async with connect_agent(live, token, agent):
        await _connected(live, device_id)
        response = await deploy(http, user, device_id, model_id)
    record = _failed(response)
    assert "did not answer" in record["error"]


async def test_a_cancelled_transfer_is_recorded_failed(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    """Shutdown or a departed client cancels the transfer: the record must not stay open."""
    user = await signup(http)
    device_id, token, model_id, _ = await device_and_model(http, user)
    got_body = asyncio.Event()

    async def agent(stream: Stream) -> None:
        await read_request(stream, Received())
        got_body.set()
        await asyncio.Event().wait()

    runtime = _runtime(live)
    storage = STORAGE.of(live.app)
    async with connect_agent(live, token, agent):
        await _connected(live, device_id)
        link = HUB.of(live.app).get(uuid.UUID(device_id))
        assert link is not None
        async with runtime.db.transaction() as conn:
            deployment, model = await service.prepare(
                conn,
                uuid.UUID(user.org_id),
                uuid.UUID(user.id),
                uuid.UUID(device_id),
                uuid.UUID(model_id),
                transfer_timeout=600,
            )
        task = asyncio.create_task(
            service.transfer(
                runtime.db,
                storage,
                link,
                deployment,
                model,
                answer_timeout=60,
                transfer_timeout=600,
            )
        )
        await got_body.wait()
        [during] = await deployments_of(http, user, device_id)
        assert during["status"] == DeploymentStatus.TRANSFERRING
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    [record] = await deployments_of(http, user, device_id)
    assert record["status"] == "failed"
    assert record["error"] == "the transfer was interrupted"
