"""Enrollment keys and the agent's enrolment, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select, update

from tests.support.api import User, error_code, signup
from tests.support.audit import actions
from tests.support.devices import API, bearer, runtime, serial
from tests.support.orgs import acting, create_org, member
from visiona.kit.schema import enrollment_keys
from visiona.kit.tokens import hash_token


async def create_key(client: httpx.AsyncClient, user: User, **body: Any) -> dict[str, Any]:
    """A new enrollment key of ``user`` (its answer, with the plaintext)."""
    payload = {"name": "fleet", "max_uses": 10, "expires_in_hours": 24, **body}
    response = await client.post(f"{API}/enrollment-keys", json=payload, headers=user.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def enroll(
    client: httpx.AsyncClient, key: str, sn: str | None = None, **body: Any
) -> httpx.Response:
    """The agent's enrolment with ``key``."""
    payload = {
        "enrollment_key": key,
        "serial_number": sn or serial(),
        "device_type": "kl720",
        **body,
    }
    return await client.post(f"{API}/agent/enroll", json=payload)


async def test_create_shows_the_key_once_and_lists_it_without(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    created = await create_key(client, user, tags={"site": "lab"}, name_template="{type}-{serial}")
    assert created["key"].startswith("vek_")
    assert created["uses"] == 0
    assert created["tags"] == {"site": "lab"}
    listed = await client.get(f"{API}/enrollment-keys", headers=user.headers)
    assert listed.status_code == 200
    (item,) = listed.json()["items"]
    assert item["id"] == created["id"]
    assert "key" not in item
    async with runtime(app).db.transaction() as conn:
        stored = (await conn.execute(select(enrollment_keys.c.key_hash))).scalar_one()
    assert stored == hash_token(created["key"])
    assert await actions(app, action="enrollment_key.created") == ["enrollment_key.created"]


async def test_enroll_pairs_a_device_with_the_keys_tags_and_templated_name(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    created = await create_key(client, user, tags={"site": "lab"}, name_template="{type}-{serial}")
    sn = serial()
    response = await enroll(client, created["key"], sn, name="ignored")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["session_token"].startswith("vst_")
    device = (await client.get(f"{API}/devices/{body['device_id']}", headers=user.headers)).json()
    assert device["name"] == f"kl720-{sn}"
    assert device["tags"]["site"] == "lab"
    assert device["paired_at"] is not None
    status = await client.post(
        f"{API}/agent/status", json={"usb_status": "online"}, headers=bearer(body["session_token"])
    )
    assert status.status_code == 204
    again = await enroll(client, created["key"], sn)
    assert again.status_code == 201
    assert again.json()["device_id"] == body["device_id"]  # same owner and serial: re-used
    listed = (await client.get(f"{API}/enrollment-keys", headers=user.headers)).json()["items"]
    assert listed[0]["uses"] == 2
    assert listed[0]["last_used_at"] is not None
    assert await actions(app, action="device.enrolled") == ["device.enrolled"] * 2


async def test_without_template_the_agents_name_else_the_serial(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    created = await create_key(client, user)
    named = (await enroll(client, created["key"], name="Bench PC")).json()
    sn = serial()
    unnamed = (await enroll(client, created["key"], sn)).json()
    one = (await client.get(f"{API}/devices/{named['device_id']}", headers=user.headers)).json()
    two = (await client.get(f"{API}/devices/{unnamed['device_id']}", headers=user.headers)).json()
    assert one["name"] == "Bench PC"
    assert two["name"] == sn


async def test_every_unusable_key_is_the_same_401(client: httpx.AsyncClient, app: FastAPI) -> None:
    user = await signup(client)
    revoked = await create_key(client, user)
    gone = await client.delete(f"{API}/enrollment-keys/{revoked['id']}", headers=user.headers)
    assert gone.status_code == 204
    used_up = await create_key(client, user, max_uses=1)
    assert (await enroll(client, used_up["key"])).status_code == 201
    expired = await create_key(client, user)
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            update(enrollment_keys)
            .where(enrollment_keys.c.key_hash == hash_token(expired["key"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    answers = [
        await enroll(client, key)
        for key in (revoked["key"], used_up["key"], expired["key"], "vek_" + "x" * 43, "nope")
    ]
    assert {a.status_code for a in answers} == {401}
    assert {a.json()["error"]["message"] for a in answers} == {"The token is not valid."}
    assert await actions(app, action="enrollment_key.revoked") == ["enrollment_key.revoked"]


async def test_sixteen_concurrent_enrolments_never_exceed_max_uses(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    created = await create_key(client, user, max_uses=5)
    answers = await asyncio.gather(*(enroll(client, created["key"]) for _ in range(16)))
    assert sorted(a.status_code for a in answers) == [201] * 5 + [401] * 11
    listed = (await client.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert len(listed) == 5
    async with runtime(app).db.transaction() as conn:
        uses = (await conn.execute(select(enrollment_keys.c.uses))).scalar_one()
    assert uses == 5


async def test_another_users_key_is_404_to_revoke_and_not_listed(
    client: httpx.AsyncClient,
) -> None:
    owner, other = await signup(client), await signup(client)
    created = await create_key(client, owner)
    refused = await client.delete(f"{API}/enrollment-keys/{created['id']}", headers=other.headers)
    assert refused.status_code == 404
    assert error_code(refused) == "not_found"
    listed = (await client.get(f"{API}/enrollment-keys", headers=other.headers)).json()
    assert listed["items"] == []


async def test_a_key_enrols_into_the_organisation_it_was_made_in(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    viewer = await member(client, owner, team, "viewer")
    response = await client.post(
        f"{API}/enrollment-keys",
        json={"name": "team", "max_uses": 2, "expires_in_hours": 1, "tags": {"site": "a"}},
        headers=acting(owner, team),
    )
    assert response.status_code == 201, response.text
    enrolled = await enroll(client, response.json()["key"], "TEAM-1")
    assert enrolled.status_code == 201, enrolled.text
    device_id = enrolled.json()["device_id"]
    # the team's device, seen by any member acting in the team (tags applied) ...
    seen = await client.get(f"{API}/devices/{device_id}", headers=acting(viewer, team))
    assert seen.status_code == 200, seen.text
    assert seen.json()["tags"]["site"] == "a"
    # ... and not in the personal organisation of the key's creator
    personal = await client.get(f"{API}/devices/{device_id}", headers=owner.headers)
    assert personal.status_code == 404
    listed = (await client.get(f"{API}/devices", headers=owner.headers)).json()["items"]
    assert device_id not in [d["id"] for d in listed]
    # the enrolment is in the team's trail
    trail = await client.get(
        f"{API}/audit-events", params={"action": "device.enrolled"}, headers=acting(owner, team)
    )
    assert [e["target_id"] for e in trail.json()["items"]] == [device_id]


async def test_keys_are_an_admins_and_another_organisations_key_is_404(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    admin = await member(client, owner, team, "admin")
    operator = await member(client, owner, team, "operator")
    body = {"name": "k", "max_uses": 1, "expires_in_hours": 1}
    for method, path in (("POST", ""), ("GET", "")):
        refused = await client.request(
            method,
            f"{API}/enrollment-keys{path}",
            json=body if method == "POST" else None,
            headers=acting(operator, team),
        )
        assert (refused.status_code, error_code(refused)) == (403, "forbidden"), method
        assert "enrollment" in refused.json()["error"]["message"]
    made = await client.post(f"{API}/enrollment-keys", json=body, headers=acting(admin, team))
    assert made.status_code == 201, made.text
    key_id = made.json()["id"]
    refused = await client.delete(f"{API}/enrollment-keys/{key_id}", headers=acting(operator, team))
    assert refused.status_code == 403
    # the admin's personal organisation does not hold the team's key
    elsewhere = await client.delete(f"{API}/enrollment-keys/{key_id}", headers=admin.headers)
    assert (elsewhere.status_code, error_code(elsewhere)) == (404, "not_found")
    assert (await client.get(f"{API}/enrollment-keys", headers=admin.headers)).json()["items"] == []
    listed = (await client.get(f"{API}/enrollment-keys", headers=acting(owner, team))).json()
    assert [k["id"] for k in listed["items"]] == [key_id]
    revoked = await client.delete(f"{API}/enrollment-keys/{key_id}", headers=acting(owner, team))
    assert revoked.status_code == 204


async def test_bad_tags_and_templates_are_refused(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    for body, code in (
        ({"tags": {"chip": "kl520"}}, "reserved_tag"),
        ({"tags": {"Bad Key": "x"}}, "invalid_tag"),
        ({"name_template": "{serial.__class__}"}, "validation_error"),
        ({"max_uses": 0}, "validation_error"),
    ):
        payload = {"name": "k", "max_uses": 3, "expires_in_hours": 1, **body}
        response = await client.post(f"{API}/enrollment-keys", json=payload, headers=user.headers)
        assert response.status_code in (400, 422), response.text
        assert error_code(response) == code


async def test_enrolments_are_rate_limited_per_key(client: httpx.AsyncClient, app: FastAPI) -> None:
    runtime(app).settings.enroll_rate_limit = 2
    user = await signup(client)
    created = await create_key(client, user)
    first = [await enroll(client, created["key"]) for _ in range(2)]
    limited = await enroll(client, created["key"])
    assert [a.status_code for a in first] == [201, 201]
    assert limited.status_code == 429
    assert error_code(limited) == "rate_limited"
