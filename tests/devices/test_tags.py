"""Device tags and selectors through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.api import User, error_code, signup
from tests.support.audit import stored_events
from tests.support.devices import API, serial


async def _device(
    client: httpx.AsyncClient, user: User, device_type: str | None = "KL520", name: str = "Dev"
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "serial_number": serial()}
    if device_type is not None:
        body["device_type"] = device_type
    response = await client.post(f"{API}/devices", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _put(
    client: httpx.AsyncClient, user: User, device_id: str, tags: dict[str, str]
) -> httpx.Response:
    return await client.put(
        f"{API}/devices/{device_id}/tags", json={"tags": tags}, headers=user.headers
    )


async def _patch(
    client: httpx.AsyncClient, user: User, device_id: str, **body: Any
) -> httpx.Response:
    return await client.patch(f"{API}/devices/{device_id}/tags", json=body, headers=user.headers)


async def _names(client: httpx.AsyncClient, user: User, selector: str, **params: Any) -> list[str]:
    response = await client.get(
        f"{API}/devices", params={"selector": selector, **params}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    return [item["name"] for item in response.json()["items"]]


async def test_every_device_answer_carries_the_builtin_tags_and_no_model(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    device = await _device(client, user, device_type=" KL520 ")
    assert device["tags"] == {"chip": "kl520", "type": "KL520"}
    assert device["current_model"] is None
    assert device["previous_model"] is None
    unknown = await _device(client, user, device_type=None)
    assert unknown["tags"] == {}
    listed = (await client.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert [item["tags"] for item in listed] == [device["tags"], {}]


async def test_put_replaces_the_tags_and_every_answer_shows_them(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    device = await _device(client, user)
    first = await _put(client, user, device["id"], {"site": "lab", "room": "2"})
    assert first.status_code == 200, first.text
    assert first.json()["tags"] == {"chip": "kl520", "room": "2", "site": "lab", "type": "KL520"}
    second = await _put(client, user, device["id"], {"site": "warehouse"})
    assert second.json()["tags"] == {"chip": "kl520", "site": "warehouse", "type": "KL520"}
    fetched = (await client.get(f"{API}/devices/{device['id']}", headers=user.headers)).json()
    assert fetched["tags"] == second.json()["tags"]
    events = await stored_events(app, action="device.tagged", target_id=device["id"])
    assert [e.detail for e in events] == [
        {"set": {"room": "2", "site": "lab"}, "removed": []},
        {"set": {"site": "warehouse"}, "removed": ["room"]},
    ]
    assert events[0].actor_id is not None


async def test_patch_sets_and_removes_some_tags_and_leaves_the_others(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    device = await _device(client, user)
    await _put(client, user, device["id"], {"site": "lab", "room": "2", "old": "x"})
    response = await _patch(
        client, user, device["id"], set={"room": "3", "line": "A"}, remove=["old", "absent"]
    )
    assert response.status_code == 200, response.text
    tags = response.json()["tags"]
    assert tags == {"chip": "kl520", "line": "A", "room": "3", "site": "lab", "type": "KL520"}
    unchanged = await _patch(client, user, device["id"], set={"site": "lab"})
    assert unchanged.status_code == 200
    events = await stored_events(app, action="device.tagged", target_id=device["id"])
    assert len(events) == 2  # the no-op PATCH records nothing
    assert events[1].detail == {"set": {"line": "A", "room": "3"}, "removed": ["old"]}


@pytest.mark.parametrize("key", ["chip", "type", "visiona.io/arch"])
async def test_builtin_tags_are_read_only(client: httpx.AsyncClient, key: str) -> None:
    user = await signup(client)
    device = await _device(client, user)
    put = await _put(client, user, device["id"], {key: "kl720"})
    assert put.status_code == 400
    assert error_code(put) == "reserved_tag"
    assert put.json()["error"]["key"] == key
    removed = await _patch(client, user, device["id"], remove=[key])
    assert removed.status_code == 400
    assert error_code(removed) == "reserved_tag"


async def test_tags_read_from_a_device_can_be_sent_back_unchanged(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    device = await _device(client, user)
    first = (await _put(client, user, device["id"], {"site": "lab"})).json()
    again = await _put(client, user, device["id"], first["tags"])  # built-ins included
    assert again.status_code == 200, again.text
    assert again.json()["tags"] == first["tags"]
    patched = await _patch(client, user, device["id"], set={"chip": "kl520", "room": "1"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["tags"]["room"] == "1"


@pytest.mark.parametrize(
    "tags",
    [
        {"Site": "lab"},
        {"-site": "lab"},
        {"site/": "lab"},
        {"si te": "lab"},
        {"k" * 64: "v"},
        {"": "v"},
        {"site": ""},
        {"site": "l b"},
        {"site": "lab-"},
        {"site": "v" * 64},
        {"site": "läb"},
    ],
)
async def test_bad_keys_and_values_are_a_422_invalid_tag(
    client: httpx.AsyncClient, tags: dict[str, str]
) -> None:
    user = await signup(client)
    device = await _device(client, user)
    response = await _put(client, user, device["id"], tags)
    assert response.status_code == 422, response.text
    assert error_code(response) == "invalid_tag"
    after = (await client.get(f"{API}/devices/{device['id']}", headers=user.headers)).json()
    assert after["tags"] == {"chip": "kl520", "type": "KL520"}


async def test_a_key_both_set_and_removed_is_a_422(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device = await _device(client, user)
    response = await _patch(client, user, device["id"], set={"a": "b"}, remove=["a"])
    assert response.status_code == 422
    assert error_code(response) == "invalid_tag"


async def test_more_than_32_tags_is_a_422_and_changes_nothing(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device = await _device(client, user)
    full = {f"k{i}": "v" for i in range(32)}
    assert (await _put(client, user, device["id"], full)).status_code == 200
    over = await _patch(client, user, device["id"], set={"one-more": "v"})
    assert over.status_code == 422
    assert error_code(over) == "too_many_tags"
    swapped = await _patch(client, user, device["id"], set={"one-more": "v"}, remove=["k0"])
    assert swapped.status_code == 200
    too_many = await _put(client, user, device["id"], {f"k{i}": "v" for i in range(33)})
    assert error_code(too_many) == "too_many_tags"
    after = (await client.get(f"{API}/devices/{device['id']}", headers=user.headers)).json()
    assert len(after["tags"]) == 32 + 2


async def test_malformed_bodies_are_a_422_validation_error(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device = await _device(client, user)
    for body in ({"tags": {"a": 1}}, {"tags": ["a"]}, {}, {"tags": {}, "extra": 1}):
        response = await client.put(
            f"{API}/devices/{device['id']}/tags", json=body, headers=user.headers
        )
        assert response.status_code == 422, body
        assert error_code(response) == "validation_error"
    huge = await _put(client, user, device["id"], {f"k{i}": "v" for i in range(65)})
    assert error_code(huge) == "validation_error"


async def test_another_users_device_is_a_404(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    other = await signup(client)
    device = await _device(client, owner)
    assert (await _put(client, other, device["id"], {"a": "b"})).status_code == 404
    assert (await _patch(client, other, device["id"], set={"a": "b"})).status_code == 404
    await _put(client, owner, device["id"], {"site": "lab"})
    assert await _names(client, other, "site=lab") == []


async def test_selectors_filter_the_device_list(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    a = await _device(client, user, "KL520", "a")
    b = await _device(client, user, "kl720", "b")
    c = await _device(client, user, "KL520", "c")
    await _device(client, user, None, "d")
    await _put(client, user, a["id"], {"site": "lab", "room": "1"})
    await _put(client, user, b["id"], {"site": "lab", "retired": "yes"})
    await _put(client, user, c["id"], {"site": "warehouse"})
    expected = {
        "site=lab": ["a", "b"],
        "site==lab": ["a", "b"],
        "site!=lab": ["c", "d"],
        "site in (lab,warehouse)": ["a", "b", "c"],
        "site notin (lab)": ["c", "d"],
        "retired": ["b"],
        "!retired": ["a", "c", "d"],
        "chip=kl520": ["a", "c"],
        "chip in (kl720)": ["b"],
        "chip notin (kl520)": ["b", "d"],
        "!chip": ["d"],
        "type=KL520": ["a", "c"],
        "site=lab,chip in (kl520,kl720),!retired": ["a"],
        "site=lab,room=1,room": ["a"],
        "": ["a", "b", "c", "d"],
        "nowhere=x": [],
    }
    for selector, names in expected.items():
        assert await _names(client, user, selector) == names, selector


async def test_a_selector_combines_with_the_status_filters_and_pagination(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    for i in range(7):
        device = await _device(client, user, name=f"d{i}")
        await _put(client, user, device["id"], {"parity": "even" if i % 2 == 0 else "odd"})
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"selector": "parity=even", "limit": 2, "status": "unknown"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(f"{API}/devices", params=params, headers=user.headers)).json()
        assert len(page["items"]) == 2 or page["next_cursor"] is None  # pages stay full
        seen += [item["name"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["d0", "d2", "d4", "d6"]
    assert await _names(client, user, "parity=even", status="online") == []


async def test_a_bad_selector_is_a_400_with_position_and_reason(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    response = await client.get(
        f"{API}/devices", params={"selector": "site in lab"}, headers=user.headers
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_selector"
    assert error["position"] == 8
    assert "(" in error["reason"]


async def test_openapi_declares_the_tag_routes_and_their_error_codes(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    tags_path = paths["/api/v1/devices/{device_id}/tags"]
    assert set(tags_path) == {"put", "patch"}
    for method in ("put", "patch"):
        responses = tags_path[method]["responses"]
        assert "reserved_tag" in responses["400"]["description"]
        assert "invalid_tag" in responses["422"]["description"]
        assert "too_many_tags" in responses["422"]["description"]
        assert "not_found" in responses["404"]["description"]
    listing = paths["/api/v1/devices"]["get"]
    assert "invalid_selector" in listing["responses"]["400"]["description"]
    assert "selector" in {p["name"] for p in listing["parameters"]}
    device = (await client.get("/openapi.json")).json()["components"]["schemas"]["DeviceOut"]
    assert {"tags", "current_model", "previous_model"} <= set(device["properties"])
