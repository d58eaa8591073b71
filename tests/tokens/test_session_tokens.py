"""Agent session tokens: listing, revocation, validity and the agent status report."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI

from tests.support.api import error_code, signup
from tests.support.devices import (
    API,
    bearer,
    paired_device,
    runtime,
    set_session_expiry,
)
from visiona.kit.errors import UnauthorizedError
from visiona.kit.tokens import hash_token
from visiona.tokens.repository import VALID_HASHES_BATCH, valid_session_hashes
from visiona.tokens.service import DeviceIdentity, authenticate_device, sessions_not_holding


async def _authenticate(app: FastAPI, token: str | None) -> DeviceIdentity:
    async with runtime(app).db.transaction() as conn:
        return await authenticate_device(conn, token)


async def test_authenticate_device_returns_the_device_and_owner(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    identity = await _authenticate(app, device["session_token"])
    assert identity.device_id == uuid.UUID(device["device_id"])
    assert identity.owner_user_id == uuid.UUID(user.id)
    assert identity.token_hash == hash_token(device["session_token"])


async def test_session_token_is_invalid_once_revoked_expired_or_device_deleted(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    revoked = await paired_device(client, user)
    expired = await paired_device(client, user)
    unpaired = await paired_device(client, user)
    revoke = await client.delete(
        f"{API}/session-tokens/{revoked['session_token_id']}", headers=user.headers
    )
    assert revoke.status_code == 204
    await set_session_expiry(
        app, hash_token(expired["session_token"]), datetime.now(UTC) - timedelta(seconds=1)
    )
    deleted = await client.delete(f"{API}/devices/{unpaired['device_id']}", headers=user.headers)
    assert deleted.status_code == 204
    messages = set()
    for token in (
        revoked["session_token"],
        expired["session_token"],
        unpaired["session_token"],
        "vst_" + "C" * 43,
        "vpt_" + "C" * 43,
        "",
        None,
    ):
        with pytest.raises(UnauthorizedError) as caught:
            await _authenticate(app, token)
        messages.add(caught.value.message)
    assert len(messages) == 1


async def test_list_session_tokens_of_a_device_never_shows_plaintext(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    first = await paired_device(client, user)
    sn = (await client.get(f"{API}/devices/{first['device_id']}", headers=user.headers)).json()[
        "serial_number"
    ]
    second = await paired_device(client, user, sn)
    response = await client.get(
        f"{API}/devices/{first['device_id']}/session-tokens", headers=user.headers
    )
    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["id"] for item in items] == [
        first["session_token_id"],
        second["session_token_id"],
    ]
    assert first["session_token"] not in response.text
    assert items[0]["pairing_token_id"] == first["pairing_token_id"]
    assert items[0]["device_id"] == first["device_id"]
    assert items[0]["revoked_at"] is None
    page = await client.get(
        f"{API}/devices/{first['device_id']}/session-tokens?limit=1", headers=user.headers
    )
    assert len(page.json()["items"]) == 1
    assert page.json()["next_cursor"] is not None


async def test_revoking_a_session_token_keeps_the_devices_other_tokens(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    first = await paired_device(client, user)
    sn = (await client.get(f"{API}/devices/{first['device_id']}", headers=user.headers)).json()[
        "serial_number"
    ]
    second = await paired_device(client, user, sn)
    token_id = first["session_token_id"]
    assert (
        await client.delete(f"{API}/session-tokens/{token_id}", headers=user.headers)
    ).status_code == 204
    assert (
        await client.delete(f"{API}/session-tokens/{token_id}", headers=user.headers)
    ).status_code == 204  # idempotent
    identity = await _authenticate(app, second["session_token"])
    assert identity.device_id == uuid.UUID(first["device_id"])
    items = (
        await client.get(f"{API}/devices/{first['device_id']}/session-tokens", headers=user.headers)
    ).json()["items"]
    assert [item["revoked_at"] is not None for item in items] == [True, False]


async def test_revoke_session_token_with_malformed_or_unknown_id_is_404(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    for token_id in ("nope", "f" * 64, "F" * 64, str(uuid.uuid4())):
        response = await client.delete(f"{API}/session-tokens/{token_id}", headers=user.headers)
        assert response.status_code == 404
        assert error_code(response) == "not_found"


async def test_agent_status_stores_the_usb_status(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    for usb_status in ("online", "offline", "unknown", "online"):
        response = await client.post(
            f"{API}/agent/status",
            json={"usb_status": usb_status},
            headers=bearer(device["session_token"]),
        )
        assert response.status_code == 204
        assert response.content == b""
    fetched = await client.get(f"{API}/devices/{device['device_id']}", headers=user.headers)
    assert fetched.json()["status"] == "online"
    assert fetched.json()["remote_status"] == "offline"  # the tunnel's field, untouched


async def test_agent_status_with_a_bad_value_is_a_validation_error(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    for body in ({"usb_status": "plugged"}, {}, {"usb_status": None}, {"usb_status": 1}):
        response = await client.post(
            f"{API}/agent/status", json=body, headers=bearer(device["session_token"])
        )
        assert response.status_code == 422, body
        assert error_code(response) == "validation_error"


async def test_agent_status_rejects_bad_session_tokens_alike(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    revoked_id = device["session_token_id"]
    await client.delete(f"{API}/session-tokens/{revoked_id}", headers=user.headers)
    web = user.headers  # a web session token is not an agent token
    attempts = [
        bearer(device["session_token"]),
        bearer("vst_" + "D" * 43),
        web,
        {"Authorization": "Basic abc"},
        {},
    ]
    bodies = []
    for headers in attempts:
        response = await client.post(
            f"{API}/agent/status", json={"usb_status": "online"}, headers=headers
        )
        assert response.status_code == 401
        bodies.append(response.json())
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["error"]["code"] == "unauthorized"


async def test_valid_session_hashes_keeps_only_the_tokens_that_still_hold(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """The revocation re-check of a node's tunnels: which of many hashes still hold, in
    statements of at most VALID_HASHES_BATCH hashes (here more than two)."""
    user = await signup(client)
    valid, revoked, expired, unpaired = [await paired_device(client, user) for _ in range(4)]
    revoke = await client.delete(
        f"{API}/session-tokens/{revoked['session_token_id']}", headers=user.headers
    )
    assert revoke.status_code == 204
    await set_session_expiry(
        app, hash_token(expired["session_token"]), datetime.now(UTC) - timedelta(seconds=1)
    )
    deleted = await client.delete(f"{API}/devices/{unpaired['device_id']}", headers=user.headers)
    assert deleted.status_code == 204
    hashes = {hash_token(d["session_token"]) for d in (valid, revoked, expired, unpaired)}
    unknown = {hash_token(f"vst_{uuid.uuid4().hex}") for _ in range(2 * VALID_HASHES_BATCH)}
    async with runtime(app).db.reading() as conn:
        found = await valid_session_hashes(conn, [*hashes, *unknown], datetime.now(UTC))
        gone = await sessions_not_holding(conn, hashes)
        assert await sessions_not_holding(conn, []) == set()
    assert found == {hash_token(valid["session_token"])}
    assert gone == hashes - found
