"""The model a device runs: recorded with a deployment's success, on both databases.

The agent here is the small test agent of tests/support/tunnel.py; the real
``visiona agent`` (which also reports the model itself) is in
tests/agent/test_current_model.py.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import httpx

from testkit.live import LiveServer
from tests.support.api import User, signup
from tests.support.deployments import Received, answer, deploy, device_and_model, read_request
from tests.support.models import nef, uploaded
from tests.support.tunnel import connect_agent, wait_for
from visiona.tunnel.dependencies import HUB
from visiona.yamux import Stream

API = "/api/v1"


async def _device(http: httpx.AsyncClient, user: User, device_id: str) -> dict[str, Any]:
    response = await http.get(f"{API}/devices/{device_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_each_successful_deployment_becomes_the_current_model_and_moves_the_old_one(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token, first_id, content = await device_and_model(http, user, 40_000)
    second_content = nef(30_000, seed=11)
    second_id = str((await uploaded(http, user, second_content, chip="kl520"))["id"])
    refusing: set[str] = set()

    async def agent(stream: Stream) -> None:
        received = Received()
        await read_request(stream, received)
        model_id = received.target.rsplit("/", 1)[1]
        if model_id in refusing:
            answer(stream, 500, b'{"error": {"code": "hook_failed", "message": "no"}}')
        else:
            answer(stream, 200, json.dumps({"model_id": model_id, "hook": "ran"}).encode())

    async with connect_agent(live, token, agent):
        await wait_for(lambda: _up(live, device_id))
        assert (await _device(http, user, device_id))["current_model"] is None
        assert (await deploy(http, user, device_id, first_id)).json()["status"] == "succeeded"
        first = {"id": first_id, "sha256": hashlib.sha256(content).hexdigest()}
        device = await _device(http, user, device_id)
        assert device["current_model"] == first
        assert device["previous_model"] is None

        assert (await deploy(http, user, device_id, second_id)).status_code == 201
        second = {"id": second_id, "sha256": hashlib.sha256(second_content).hexdigest()}
        device = await _device(http, user, device_id)
        assert device["current_model"] == second
        assert device["previous_model"] == first

        refusing.add(first_id)  # a failed deployment changes neither
        assert (await deploy(http, user, device_id, first_id)).status_code == 502
        device = await _device(http, user, device_id)
        assert (device["current_model"], device["previous_model"]) == (second, first)

        listed = (await http.get(f"{API}/devices", headers=user.headers)).json()["items"]
        assert listed[0]["current_model"] == second


async def _up(live: LiveServer, device_id: str) -> bool:
    return HUB.of(live.app).get(uuid.UUID(device_id)) is not None
