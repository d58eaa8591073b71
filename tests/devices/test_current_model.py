"""The agent reports the model it runs (``POST /agent/status``), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx

from tests.support.api import error_code, signup
from tests.support.devices import API
from tests.support.tunnel import paired_agent_token


def _model(seed: str) -> dict[str, str]:
    return {"id": str(uuid.uuid4()), "sha256": hashlib.sha256(seed.encode()).hexdigest()}


async def _report(client: httpx.AsyncClient, token: str, **extra: Any) -> httpx.Response:
    return await client.post(
        f"{API}/agent/status",
        json={"usb_status": "online", **extra},
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_a_reported_model_becomes_current_and_the_old_one_previous(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    device_id, token = await paired_agent_token(client, user)
    first, second = _model("a"), _model("b")

    async def models() -> tuple[Any, Any]:
        body = (await client.get(f"{API}/devices/{device_id}", headers=user.headers)).json()
        return body["current_model"], body["previous_model"]

    assert (await _report(client, token, current_model=first)).status_code == 204
    assert await models() == (first, None)
    assert (await _report(client, token, current_model=first)).status_code == 204
    assert await models() == (first, None)  # the same model again moves nothing
    assert (await _report(client, token, current_model=second)).status_code == 204
    assert await models() == (second, first)
    assert (await _report(client, token)).status_code == 204  # omitted: unchanged
    assert (await _report(client, token, current_model=None)).status_code == 204
    assert await models() == (second, first)
    upper = {"id": second["id"], "sha256": second["sha256"].upper()}
    assert (await _report(client, token, current_model=upper)).status_code == 204
    assert await models() == (second, first)  # the sha256 is stored in lower case


async def test_a_malformed_model_report_is_a_422(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    _, token = await paired_agent_token(client, user)
    for bad in (
        {"id": "not-a-uuid", "sha256": "0" * 64},
        {"id": str(uuid.uuid4()), "sha256": "xyz"},
        {"id": str(uuid.uuid4())},
        {"id": str(uuid.uuid4()), "sha256": "0" * 64, "extra": 1},
    ):
        response = await _report(client, token, current_model=bad)
        assert response.status_code == 422, bad
        assert error_code(response) == "validation_error"
