"""Devices through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from tests.support.api import error_code, signup
from tests.support.devices import API, create_device, paired_device, runtime, serial
from visiona.kit.schema import devices


async def test_create_device_returns_201_with_default_statuses(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    sn = serial()
    response = await client.post(
        f"{API}/devices",
        json={"name": "Bench rig", "serial_number": sn, "device_type": "kl720"},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "Bench rig"
    assert body["serial_number"] == sn
    assert body["device_type"] == "kl720"
    assert body["remote_status"] == "offline"
    assert body["status"] == "unknown"
    assert body["paired_at"] is None
    assert "owner_user_id" not in body
    fetched = await client.get(f"{API}/devices/{body['id']}", headers=user.headers)
    assert fetched.json() == body


async def test_duplicate_live_serial_for_the_same_owner_is_a_conflict(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    sn = serial()
    await create_device(client, user, sn)
    dup = await client.post(
        f"{API}/devices", json={"name": "Again", "serial_number": sn}, headers=user.headers
    )
    assert dup.status_code == 409
    assert error_code(dup) == "conflict"


async def test_unpaired_serial_can_be_registered_again_as_a_new_device(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    sn = serial()
    first = await create_device(client, user, sn)
    assert (
        await client.delete(f"{API}/devices/{first['id']}", headers=user.headers)
    ).status_code == 204
    second = await create_device(client, user, sn)
    assert second["id"] != first["id"]


async def test_unpaired_serial_can_be_paired_again_as_a_new_device(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    sn = serial()
    first = await paired_device(client, user, sn)
    deleted = await client.delete(f"{API}/devices/{first['device_id']}", headers=user.headers)
    assert deleted.status_code == 204
    second = await paired_device(client, user, sn)
    assert second["device_id"] != first["device_id"]
    gone = await client.get(f"{API}/devices/{first['device_id']}", headers=user.headers)
    assert gone.status_code == 404


async def test_rename_device(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device = await create_device(client, user)
    renamed = await client.patch(
        f"{API}/devices/{device['id']}", json={"name": "Renamed"}, headers=user.headers
    )
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Renamed"
    assert datetime.fromisoformat(renamed.json()["updated_at"]) >= datetime.fromisoformat(
        device["updated_at"]
    )
    fetched = await client.get(f"{API}/devices/{device['id']}", headers=user.headers)
    assert fetched.json()["name"] == "Renamed"


@pytest.mark.parametrize(
    "body", [{"name": ""}, {}, {"name": "x", "serial_number": "other"}, {"name": "n" * 201}]
)
async def test_rename_with_a_bad_body_is_a_validation_error(
    client: httpx.AsyncClient, body: dict[str, str]
) -> None:
    user = await signup(client)
    device = await create_device(client, user)
    response = await client.patch(f"{API}/devices/{device['id']}", json=body, headers=user.headers)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"


async def test_malformed_device_id_is_a_validation_error_not_a_500(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    for method in ("GET", "PATCH", "DELETE"):
        for device_id in ("not-a-uuid", "1234", "%20"):
            response = await client.request(
                method, f"{API}/devices/{device_id}", json={"name": "x"}, headers=user.headers
            )
            assert response.status_code == 422, (method, device_id)
            assert error_code(response) == "validation_error"
    sessions = await client.get(f"{API}/devices/nope/session-tokens", headers=user.headers)
    assert sessions.status_code == 422


async def test_unknown_device_is_404(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    missing = "00000000-0000-4000-8000-000000000001"
    for method in ("GET", "PATCH", "DELETE"):
        response = await client.request(
            method, f"{API}/devices/{missing}", json={"name": "x"}, headers=user.headers
        )
        assert response.status_code == 404, method
        assert error_code(response) == "not_found"


async def test_devices_need_authentication(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/devices")
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"


async def test_list_is_in_creation_order_and_pages_with_a_cursor(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    created = [(await create_device(client, user, name=f"d{i}"))["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await client.get(f"{API}/devices", params=params, headers=user.headers)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == created
    assert pages == 3
    everything = await client.get(f"{API}/devices", headers=user.headers)
    assert [item["id"] for item in everything.json()["items"]] == created
    assert everything.json()["next_cursor"] is None


async def test_list_filters_by_remote_status_and_usb_status(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    a = await create_device(client, user)
    b = await create_device(client, user)
    c = await create_device(client, user)
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            update(devices).where(devices.c.id == uuid.UUID(a["id"])).values(remote_status="online")
        )
        await conn.execute(
            update(devices).where(devices.c.id == uuid.UUID(b["id"])).values(status="online")
        )

    async def ids(**params: str) -> list[str]:
        response = await client.get(f"{API}/devices", params=params, headers=user.headers)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids(remote_status="online") == [a["id"]]
    assert await ids(remote_status="offline") == [b["id"], c["id"]]
    assert await ids(status="online") == [b["id"]]
    assert await ids(status="unknown") == [a["id"], c["id"]]
    assert await ids(remote_status="online", status="online") == []


_BAD_LIST_PARAMS: list[dict[str, str]] = [
    {"remote_status": "sleeping"},
    {"status": "maybe"},
    {"limit": "0"},
    {"limit": "201"},
    {"limit": "many"},
    {"cursor": "not a cursor"},
    {"cursor": base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00","x"]').decode()},
    {"cursor": base64.urlsafe_b64encode(b'["yesterday","x"]').decode()},
    {"cursor": base64.urlsafe_b64encode(b'["2026-01-01T00:00:00","x"]').decode()},
    {"cursor": base64.urlsafe_b64encode(b"[1]").decode()},
    {"cursor": base64.urlsafe_b64encode(b"\xff\xfe").decode()},
]


async def test_bad_list_parameters_are_validation_errors(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    for params in _BAD_LIST_PARAMS:
        response = await client.get(f"{API}/devices", params=params, headers=user.headers)
        assert response.status_code == 422, (params, response.text)
        assert error_code(response) == "validation_error"


async def test_deleted_devices_are_not_listed(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    keep = await create_device(client, user)
    drop = await create_device(client, user)
    await client.delete(f"{API}/devices/{drop['id']}", headers=user.headers)
    items = (await client.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert [item["id"] for item in items] == [keep["id"]]


async def test_openapi_documents_the_routes_and_their_error_codes(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    expected = {
        "/api/v1/devices": {"get", "post"},
        "/api/v1/devices/{device_id}": {"get", "patch", "delete"},
        "/api/v1/devices/{device_id}/session-tokens": {"get"},
        "/api/v1/session-tokens/{token_id}": {"delete"},
        "/api/v1/pairing-tokens": {"get", "post"},
        "/api/v1/pairing-tokens/{token_id}": {"delete"},
        "/api/v1/agent/pair": {"post"},
        "/api/v1/agent/status": {"post"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
        for method in methods:
            assert paths[path][method]["summary"], (path, method)
    pair_responses = paths["/api/v1/agent/pair"]["post"]["responses"]
    assert set(pair_responses) >= {"201", "401", "409", "422", "429"}
    assert "unauthorized" in pair_responses["401"]["description"]
    assert "conflict" in paths["/api/v1/devices"]["post"]["responses"]["409"]["description"]
