"""GET /audit-events and GET /devices/{id}/audit-events: filters, keyset pages, tenancy."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.support.api import error_code, signup
from tests.support.audit import trail
from tests.support.devices import API, bearer, paired_device


async def test_the_filters_combine(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    device_id = device["device_id"]
    for name in ("One", "Two"):
        await client.patch(f"{API}/devices/{device_id}", json={"name": name}, headers=user.headers)
    renames = await trail(client, user, action="device.renamed")
    assert [item["detail"]["to"] for item in renames] == ["Two", "One"]  # newest first
    assert await trail(client, user, action="device.renamed", target_type="model") == []
    by_target = await trail(client, user, target_type="device", target_id=device_id)
    assert {item["action"] for item in by_target} == {
        "device.created",
        "device.paired",
        "device.renamed",
    }
    first = datetime.fromisoformat(renames[1]["occurred_at"])
    since = await trail(client, user, action="device.renamed", since=first.isoformat())
    assert len(since) == 2  # since is inclusive
    until = await trail(client, user, action="device.renamed", until=first.isoformat())
    assert until == []  # until is exclusive
    later = (first + timedelta(microseconds=1)).isoformat()
    assert [
        i["detail"]["to"] for i in await trail(client, user, action="device.renamed", until=later)
    ] == ["One"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert await trail(client, user, since=future) == []


async def test_pages_never_skip_or_repeat_an_event(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    for number in range(7):
        await client.patch(
            f"{API}/devices/{device['device_id']}",
            json={"name": f"N{number}"},
            headers=user.headers,
        )
    everything = await trail(client, user)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = await client.get(f"{API}/audit-events", params=params, headers=user.headers)
        assert page.status_code == 200
        seen.extend(page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert [item["id"] for item in seen] == [item["id"] for item in everything]
    bad = await client.get(f"{API}/audit-events", params={"cursor": "nope"}, headers=user.headers)
    assert bad.status_code == 422
    assert error_code(bad) == "validation_error"


async def test_bad_filters_are_a_validation_error(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    for params in ({"since": "yesterday"}, {"action": "x" * 65}, {"limit": 0}, {"limit": 201}):
        response = await client.get(f"{API}/audit-events", params=params, headers=user.headers)
        assert response.status_code == 422, params
        assert error_code(response) == "validation_error"
    client.cookies.clear()  # signing in set the session cookie
    anonymous = await client.get(f"{API}/audit-events")
    assert anonymous.status_code == 401


async def test_a_devices_history_holds_its_own_events_and_outlives_its_unpair(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    other = await paired_device(client, user)
    device_id = device["device_id"]
    renewed = await client.post(
        f"{API}/agent/session/renew", headers=bearer(device["session_token"])
    )
    assert renewed.status_code == 200
    assert (
        await client.delete(f"{API}/devices/{device_id}", headers=user.headers)
    ).status_code == 204
    response = await client.get(f"{API}/devices/{device_id}/audit-events", headers=user.headers)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["action"] for item in reversed(items)] == [
        "device.created",
        "device.paired",
        "pairing_token.used",
        "session_token.issued",
        "session_token.renewed",
        "device.unpaired",
    ]
    assert {item["device_id"] for item in items} == {device_id}
    assert other["device_id"] not in response.text
    filtered = await client.get(
        f"{API}/devices/{device_id}/audit-events",
        params={"action": "device.unpaired"},
        headers=user.headers,
    )
    assert [item["action"] for item in filtered.json()["items"]] == ["device.unpaired"]


async def test_another_users_trail_and_device_history_are_invisible(
    client: httpx.AsyncClient,
) -> None:
    owner, intruder = await signup(client), await signup(client)
    device = await paired_device(client, owner)
    foreign = await client.get(
        f"{API}/devices/{device['device_id']}/audit-events", headers=intruder.headers
    )
    missing = await client.get(
        f"{API}/devices/{uuid.uuid4()}/audit-events", headers=intruder.headers
    )
    assert foreign.status_code == 404
    assert foreign.json() == missing.json()
    theirs = await trail(client, intruder)
    assert {item["action"] for item in theirs} == {
        "user.registered",
        "org.created",
        "user.signed_in",
    }
    assert all(item["actor_id"] in (intruder.id, None) for item in theirs)
    assert device["device_id"] not in str(theirs)
    by_target = await trail(client, intruder, target_type="device", target_id=device["device_id"])
    assert by_target == []
