"""POST /agent/session/renew: a new session token of the same device, the old one revoked."""

from __future__ import annotations

import asyncio

import httpx

from tests.support.api import error_code, signup
from tests.support.devices import API, bearer, paired_device


async def _renew(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(f"{API}/agent/session/renew", headers=bearer(token))


async def test_renew_issues_a_child_token_and_revokes_the_old_one(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    old = device["session_token"]
    response = await _renew(client, old)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["device_id"] == device["device_id"]
    new = body["session_token"]
    assert new.startswith("vst_")
    assert new != old

    status = {"usb_status": "online"}
    assert (
        await client.post(f"{API}/agent/status", json=status, headers=bearer(new))
    ).status_code == 204
    refused = await client.post(f"{API}/agent/status", json=status, headers=bearer(old))
    assert refused.status_code == 401
    assert (await _renew(client, old)).status_code == 401  # the old one cannot renew again

    listed = await client.get(
        f"{API}/devices/{device['device_id']}/session-tokens", headers=user.headers
    )
    tokens = {item["id"]: item for item in listed.json()["items"]}
    new_id, old_id = body["session_token_id"], device["session_token_id"]
    assert new_id != old_id
    # the chain keeps the pairing token it started from
    assert tokens[new_id]["pairing_token_id"] == device["pairing_token_id"]
    assert tokens[new_id]["revoked_at"] is None
    assert tokens[old_id]["revoked_at"] is not None


async def test_a_revoked_device_cannot_renew(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    unpaired = await client.delete(f"{API}/devices/{device['device_id']}", headers=user.headers)
    assert unpaired.status_code == 204
    response = await _renew(client, device["session_token"])
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert (await _renew(client, "vst_not-a-token")).status_code == 401
    assert (await client.post(f"{API}/agent/session/renew")).status_code == 401


async def test_two_renewals_racing_with_one_token_give_one_new_token(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    answers = await asyncio.gather(*(_renew(client, device["session_token"]) for _ in range(4)))
    assert sorted(a.status_code for a in answers).count(200) == 1, [a.text for a in answers]
    listed = await client.get(
        f"{API}/devices/{device['device_id']}/session-tokens", headers=user.headers
    )
    live = [item for item in listed.json()["items"] if item["revoked_at"] is None]
    assert len(live) == 1


async def test_renew_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"][f"{API}/agent/session/renew"]["post"]
    assert "401" in operation["responses"]
    assert operation["summary"] == "Renew the agent's session token"
