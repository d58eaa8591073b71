"""Tenancy: another user's device, pairing token or session token is a 404 on every route,
exactly like one that does not exist, and nothing of it changes."""

from __future__ import annotations

import uuid

import httpx
from fastapi import FastAPI

from tests.support.api import error_code, signup
from tests.support.devices import API, bearer, paired_device, pairing_token, runtime
from visiona.tokens.service import authenticate_device


async def test_another_users_resources_are_404_on_every_route(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner, intruder = await signup(client), await signup(client)
    device = await paired_device(client, owner)
    unused = await pairing_token(client, owner)
    device_id = device["device_id"]
    session_id = device["session_token_id"]
    missing_device = str(uuid.uuid4())
    attempts = [
        ("GET", f"/devices/{device_id}", None, f"/devices/{missing_device}"),
        ("PATCH", f"/devices/{device_id}", {"name": "mine now"}, f"/devices/{missing_device}"),
        ("DELETE", f"/devices/{device_id}", None, f"/devices/{missing_device}"),
        (
            "GET",
            f"/devices/{device_id}/session-tokens",
            None,
            f"/devices/{missing_device}/session-tokens",
        ),
        (
            "GET",
            f"/devices/{device_id}/audit-events",
            None,
            f"/devices/{missing_device}/audit-events",
        ),
        ("DELETE", f"/session-tokens/{session_id}", None, f"/session-tokens/{uuid.uuid4()}"),
        ("DELETE", f"/pairing-tokens/{unused['id']}", None, f"/pairing-tokens/{uuid.uuid4()}"),
        (
            "DELETE",
            f"/pairing-tokens/{device['pairing_token_id']}",
            None,
            f"/pairing-tokens/{uuid.uuid4()}",
        ),
    ]
    for method, path, body, missing_path in attempts:
        foreign = await client.request(method, API + path, json=body, headers=intruder.headers)
        missing = await client.request(
            method, API + missing_path, json=body, headers=intruder.headers
        )
        assert foreign.status_code == 404, (method, path)
        assert error_code(foreign) == "not_found"
        assert foreign.json() == missing.json(), (method, path)

    # the lists show only the caller's own
    assert (await client.get(f"{API}/devices", headers=intruder.headers)).json()["items"] == []
    tokens = await client.get(f"{API}/pairing-tokens", headers=intruder.headers)
    assert tokens.json()["items"] == []
    trail = await client.get(f"{API}/audit-events", headers=intruder.headers)
    assert {item["actor_id"] for item in trail.json()["items"]} == {intruder.id}
    assert device_id not in trail.text

    # and nothing of the owner's changed
    fetched = await client.get(f"{API}/devices/{device_id}", headers=owner.headers)
    assert fetched.status_code == 200
    assert fetched.json()["name"] == "Dongle"
    listed = (await client.get(f"{API}/pairing-tokens", headers=owner.headers)).json()["items"]
    assert all(item["revoked_at"] is None for item in listed)
    sessions = await client.get(f"{API}/devices/{device_id}/session-tokens", headers=owner.headers)
    assert sessions.json()["items"][0]["revoked_at"] is None
    async with runtime(app).db.transaction() as conn:
        identity = await authenticate_device(conn, device["session_token"])
    assert str(identity.device_id) == device_id
    status = await client.post(
        f"{API}/agent/status",
        json={"usb_status": "online"},
        headers=bearer(device["session_token"]),
    )
    assert status.status_code == 204


async def test_a_serial_taken_by_another_user_is_not_a_conflict(client: httpx.AsyncClient) -> None:
    alice, bob = await signup(client), await signup(client)
    sn = f"SN-{uuid.uuid4().hex[:12]}"
    for user in (alice, bob):
        response = await client.post(
            f"{API}/devices", json={"name": "Mine", "serial_number": sn}, headers=user.headers
        )
        assert response.status_code == 201, response.text
