"""Webhook endpoints over HTTP: the secret shown once, validation codes, the
organisation's limit, roles and other organisations, edits and their audit events, the
test event, the delivery log and the outbox filling it. On SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select, update

from tests.support.api import User, error_code, signup
from tests.support.apikeys import create_key, key_headers
from tests.support.audit import stored_events
from tests.support.devices import API, runtime, serial
from tests.support.orgs import acting, create_org, member
from visiona.kit.clock import utcnow
from visiona.kit.schema import webhook_deliveries, webhook_endpoints, webhook_subscriptions
from visiona.webhooks.service import MAX_ENDPOINTS

HOOK = "https://hooks.example.com/visiona"


async def _create(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    events: list[str] | None = None,
    url: str = HOOK,
    **extra: Any,
) -> dict[str, Any]:
    response = await client.post(
        f"{API}/webhooks",
        json={"url": url, "events": events or ["device.*"], **extra},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _deliveries(
    client: httpx.AsyncClient, headers: dict[str, str], webhook_id: str, **params: Any
) -> list[dict[str, Any]]:
    response = await client.get(
        f"{API}/webhooks/{webhook_id}/deliveries", params=params, headers=headers
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _device(client: httpx.AsyncClient, user: User) -> str:
    made = await client.post(
        f"{API}/devices",
        json={"name": "cam", "serial_number": serial(), "device_type": "kl520"},
        headers=user.headers,
    )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def test_the_secret_is_shown_once_and_never_listed(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    made = await _create(
        client, owner.headers, ["rollout.failed", "device.*", "device.*"], description="ops"
    )
    secret = made["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert made["events"] == ["device.*", "rollout.failed"]
    assert made["enabled"] is True
    assert made["description"] == "ops"
    assert made["disabled_reason"] is None
    assert made["failing_since"] is None
    listed = await client.get(f"{API}/webhooks", headers=owner.headers)
    assert listed.status_code == 200
    assert listed.json()["next_cursor"] is None
    (item,) = listed.json()["items"]
    assert item == {k: v for k, v in made.items() if k != "secret"}
    shown = await client.get(f"{API}/webhooks/{made['id']}", headers=owner.headers)
    assert shown.status_code == 200
    assert "secret" not in shown.json()
    assert secret not in listed.text + shown.text
    async with runtime(app).db.reading() as conn:
        row = (await conn.execute(select(webhook_endpoints))).mappings().one()
        subscribed = (await conn.execute(select(webhook_subscriptions.c.event_type))).scalars()
        assert sorted(subscribed) == ["device.*", "rollout.failed"]
    assert row["secret"] == secret
    assert row["events"] == "device.* rollout.failed"
    (event,) = await stored_events(app, action="webhook.created")
    assert event.detail == {"url": HOOK, "events": ["device.*", "rollout.failed"]}
    assert secret not in str(event.detail)


async def test_endpoints_list_newest_first_and_page(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    ids = [(await _create(client, owner.headers, url=f"{HOOK}/{n}"))["id"] for n in range(3)]
    first = await client.get(f"{API}/webhooks", params={"limit": 2}, headers=owner.headers)
    assert [i["id"] for i in first.json()["items"]] == ids[::-1][:2]
    rest = await client.get(
        f"{API}/webhooks",
        params={"limit": 2, "cursor": first.json()["next_cursor"]},
        headers=owner.headers,
    )
    assert [i["id"] for i in rest.json()["items"]] == ids[:1]
    assert rest.json()["next_cursor"] is None


async def test_a_url_that_is_not_http_with_a_host_is_invalid_webhook_url(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    for url in (
        "ftp://hooks.example.com/x",
        "hooks.example.com/x",
        "https://",
        "https:///path",
        "https://user:pw@hooks.example.com/x",
        "https://token@hooks.example.com/x",
        "https://hooks.example.com:99999/x",
        "https://hooks.example.com/a b",
        "https://hooks.example.com/" + "a" * 2048,
    ):
        response = await client.post(
            f"{API}/webhooks", json={"url": url, "events": ["*"]}, headers=owner.headers
        )
        assert response.status_code == 422, (url, response.text)
        assert error_code(response) == "invalid_webhook_url", url
    ok = await client.post(
        f"{API}/webhooks",
        json={"url": "https://hooks.example.com:8443/in?x=1", "events": ["*"]},
        headers=owner.headers,
    )
    assert ok.status_code == 201, ok.text


async def test_an_internal_target_is_refused_at_create_and_at_url_change(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    for url in (
        "http://127.0.0.1:8080/in",
        "http://10.0.0.5/in",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/in",
        "http://localhost:8080/in",
    ):
        refused = await client.post(
            f"{API}/webhooks", json={"url": url, "events": ["*"]}, headers=owner.headers
        )
        assert refused.status_code == 422, (url, refused.text)
        assert error_code(refused) == "webhook_target_forbidden", url
    made = await client.post(
        f"{API}/webhooks", json={"url": HOOK, "events": ["*"]}, headers=owner.headers
    )
    changed = await client.patch(
        f"{API}/webhooks/{made.json()['id']}",
        json={"url": "http://192.168.1.10/in"},
        headers=owner.headers,
    )
    assert changed.status_code == 422
    assert error_code(changed) == "webhook_target_forbidden"
    listed = await client.get(f"{API}/webhooks", headers=owner.headers)
    assert [i["url"] for i in listed.json()["items"]] == [HOOK]


async def test_an_unknown_event_type_is_refused_with_its_code(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    for events in (["device.exploded"], ["nope.*"], ["webhook.tested"], ["device.*", "devices"]):
        response = await client.post(
            f"{API}/webhooks", json={"url": HOOK, "events": events}, headers=owner.headers
        )
        assert response.status_code == 422, (events, response.text)
        assert error_code(response) == "unknown_event_type"
    invalid: object
    for invalid in ([], "device.*"):
        response = await client.post(
            f"{API}/webhooks", json={"url": HOOK, "events": invalid}, headers=owner.headers
        )
        assert response.status_code == 422
        assert error_code(response) == "validation_error"
    made = await _create(client, owner.headers, ["*", "tunnel.connected", "webhook.*"])
    assert made["events"] == ["*", "tunnel.connected", "webhook.*"]
    tests_only = await _create(client, owner.headers, ["webhook.test"], url=f"{HOOK}/t")
    assert tests_only["events"] == ["webhook.test"]
    patched = await client.patch(
        f"{API}/webhooks/{made['id']}", json={"events": ["x.y"]}, headers=owner.headers
    )
    assert patched.status_code == 422
    assert error_code(patched) == "unknown_event_type"


async def test_an_organisation_has_at_most_twenty_endpoints(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    for n in range(MAX_ENDPOINTS):
        await _create(client, owner.headers, url=f"{HOOK}/{n}")
    response = await client.post(
        f"{API}/webhooks", json={"url": HOOK, "events": ["*"]}, headers=owner.headers
    )
    assert response.status_code == 409
    assert error_code(response) == "too_many_webhooks"
    other = await signup(client)  # the limit is per organisation
    await _create(client, other.headers)


async def test_viewers_and_operators_are_forbidden_admins_and_admin_keys_allowed(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    made = await _create(client, acting(owner, team))
    for role in ("viewer", "operator"):
        user = await member(client, owner, team, role)
        for method, path in (
            ("GET", "/webhooks"),
            ("GET", f"/webhooks/{made['id']}"),
            ("POST", f"/webhooks/{made['id']}/test"),
            ("GET", f"/webhooks/{made['id']}/deliveries"),
        ):
            response = await client.request(method, f"{API}{path}", headers=acting(user, team))
            assert response.status_code == 403, (role, path)
            assert error_code(response) == "forbidden"
            assert "webhooks" in response.json()["error"]["message"]
    admin = await member(client, owner, team, "admin")
    await _create(client, acting(admin, team))
    key = await create_key(client, owner, ["admin"], org_id=team)
    await _create(client, key_headers(key["key"]))
    read_key = await create_key(client, owner, ["read"], org_id=team)
    refused = await client.get(f"{API}/webhooks", headers=key_headers(read_key["key"]))
    assert refused.status_code == 403


async def test_another_organisations_endpoint_is_not_found(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    made = await _create(client, owner.headers)
    stranger = await signup(client)
    base = f"{API}/webhooks/{made['id']}"
    for method, path, body in (
        ("GET", base, None),
        ("PATCH", base, {"enabled": False}),
        ("DELETE", base, None),
        ("POST", f"{base}/test", None),
        ("GET", f"{base}/deliveries", None),
        ("GET", f"{API}/webhooks/{uuid.uuid4()}", None),
    ):
        response = await client.request(method, path, json=body, headers=stranger.headers)
        assert response.status_code == 404, (method, path)
        assert error_code(response) == "not_found"
    listed = await client.get(f"{API}/webhooks", headers=stranger.headers)
    assert listed.json()["items"] == []
    still = await client.get(base, headers=owner.headers)
    assert still.json()["enabled"] is True


async def test_a_test_event_queues_one_delivery_for_that_endpoint_only(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    one = await _create(client, owner.headers, ["rollout.failed"], url=f"{HOOK}/1")
    two = await _create(client, owner.headers, ["*"], url=f"{HOOK}/2")
    before = await _deliveries(client, owner.headers, two["id"])
    response = await client.post(f"{API}/webhooks/{one['id']}/test", headers=owner.headers)
    assert response.status_code == 202, response.text
    queued = response.json()
    (delivery,) = await _deliveries(client, owner.headers, one["id"])
    assert delivery["id"] == queued["delivery_id"]
    assert delivery["event_id"] == queued["event_id"]
    assert delivery["event_type"] == "webhook.test"
    assert delivery["state"] == "pending"
    assert delivery["attempts"] == 0
    assert delivery["last_status"] is None
    assert delivery["delivered_at"] is None
    payload = delivery["payload"]
    assert payload["type"] == "webhook.test"
    assert payload["timestamp"].endswith("Z")
    assert payload["data"]["id"] == queued["event_id"]
    assert payload["data"]["org_id"] == owner.org_id
    assert payload["data"]["endpoint_id"] == one["id"]
    assert payload["data"]["message"]
    assert await _deliveries(client, owner.headers, two["id"]) == before
    async with runtime(app).db.reading() as conn:
        count = select(func.count()).where(webhook_deliveries.c.event_type == "webhook.test")
        assert (await conn.execute(count)).scalar_one() == 1
        row = (
            (
                await conn.execute(
                    select(webhook_deliveries).where(
                        webhook_deliveries.c.seq == int(delivery["id"])
                    )
                )
            )
            .mappings()
            .one()
        )
    assert row["next_attempt_at"] <= utcnow()


async def test_a_disabled_endpoint_refuses_a_test_event(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    made = await _create(client, owner.headers)
    await client.patch(
        f"{API}/webhooks/{made['id']}", json={"enabled": False}, headers=owner.headers
    )
    response = await client.post(f"{API}/webhooks/{made['id']}/test", headers=owner.headers)
    assert response.status_code == 409
    assert error_code(response) == "webhook_disabled"
    assert await _deliveries(client, owner.headers, made["id"]) == []


async def test_a_device_rename_is_queued_for_subscribed_endpoints_in_the_delivery_log(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    device_id = await _device(client, owner)
    family = await _create(client, owner.headers, ["device.*"], url=f"{HOOK}/family")
    exact = await _create(client, owner.headers, ["device.renamed"], url=f"{HOOK}/exact")
    other = await _create(client, owner.headers, ["model.*"], url=f"{HOOK}/models")
    renamed = await client.patch(
        f"{API}/devices/{device_id}", json={"name": "door"}, headers=owner.headers
    )
    assert renamed.status_code == 200, renamed.text
    (event,) = await stored_events(app, action="device.renamed")
    for endpoint in (family, exact):
        (delivery,) = await _deliveries(client, owner.headers, endpoint["id"])
        assert delivery["event_type"] == "device.renamed"
        assert delivery["event_id"] == str(event.id)
        assert delivery["state"] == "pending"
        data = delivery["payload"]["data"]
        assert data["device_id"] == device_id
        assert data["detail"] == {"from": "cam", "to": "door"}
    assert await _deliveries(client, owner.headers, other["id"]) == []


async def test_the_delivery_log_is_newest_first_pages_and_filters_by_state(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    made = await _create(client, owner.headers)
    ids = []
    for _ in range(3):
        response = await client.post(f"{API}/webhooks/{made['id']}/test", headers=owner.headers)
        ids.append(response.json()["delivery_id"])
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.seq == int(ids[1]))
            .values(state="delivered", attempts=1, last_status=204, delivered_at=utcnow())
        )
    assert [d["id"] for d in await _deliveries(client, owner.headers, made["id"])] == ids[::-1]
    page = await client.get(
        f"{API}/webhooks/{made['id']}/deliveries", params={"limit": 2}, headers=owner.headers
    )
    assert [d["id"] for d in page.json()["items"]] == ids[:0:-1]
    rest = await client.get(
        f"{API}/webhooks/{made['id']}/deliveries",
        params={"limit": 2, "cursor": page.json()["next_cursor"]},
        headers=owner.headers,
    )
    assert [d["id"] for d in rest.json()["items"]] == ids[:1]
    assert rest.json()["next_cursor"] is None
    delivered = await _deliveries(client, owner.headers, made["id"], state="delivered")
    assert [(d["id"], d["last_status"]) for d in delivered] == [(ids[1], 204)]
    pending = await _deliveries(client, owner.headers, made["id"], state="pending")
    assert [d["id"] for d in pending] == [ids[2], ids[0]]
    assert await _deliveries(client, owner.headers, made["id"], state="failed") == []
    bad = await client.get(
        f"{API}/webhooks/{made['id']}/deliveries", params={"state": "lost"}, headers=owner.headers
    )
    assert bad.status_code == 422
    bad_cursor = await client.get(
        f"{API}/webhooks/{made['id']}/deliveries", params={"cursor": "x"}, headers=owner.headers
    )
    assert bad_cursor.status_code == 422


async def test_edits_are_audited_with_the_fields_changed(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    made = await _create(client, owner.headers, ["device.*"])
    path = f"{API}/webhooks/{made['id']}"
    response = await client.patch(
        path,
        json={"url": f"{HOOK}/v2", "events": ["rollout.*", "device.*"], "description": "pager"},
        headers=owner.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["url"] == f"{HOOK}/v2"
    assert body["events"] == ["device.*", "rollout.*"]
    assert body["description"] == "pager"
    assert body["updated_at"] > made["updated_at"]
    (event,) = await stored_events(app, action="webhook.updated")
    assert event.detail == {"fields": ["url", "events", "description"]}
    assert event.target_id == made["id"]
    # the same values again: nothing changes, nothing recorded
    again = await client.patch(path, json={"url": f"{HOOK}/v2"}, headers=owner.headers)
    assert again.json() == body
    cleared = await client.patch(path, json={"description": None}, headers=owner.headers)
    assert cleared.json()["description"] is None
    assert len(await stored_events(app, action="webhook.updated")) == 2
    async with runtime(app).db.reading() as conn:
        subscribed = (
            await conn.execute(
                select(webhook_subscriptions.c.event_type).where(
                    webhook_subscriptions.c.endpoint_id == uuid.UUID(made["id"])
                )
            )
        ).scalars()
        assert sorted(subscribed) == ["device.*", "rollout.*"]
    unknown_field = await client.patch(path, json={"secret": "x"}, headers=owner.headers)
    assert unknown_field.status_code == 422


async def test_disabled_endpoints_keep_their_queue_and_send_it_once_enabled_again(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    device_id = await _device(client, owner)
    made = await _create(client, owner.headers, ["device.*"])
    path = f"{API}/webhooks/{made['id']}"
    await client.patch(f"{API}/devices/{device_id}", json={"name": "a"}, headers=owner.headers)
    (queued,) = await _deliveries(client, owner.headers, made["id"])
    off = await client.patch(path, json={"enabled": False}, headers=owner.headers)
    assert off.status_code == 200
    assert off.json()["enabled"] is False
    assert off.json()["disabled_reason"] == "disabled by a user"
    assert off.json()["disabled_at"] is not None
    (disabled,) = await stored_events(app, action="webhook.updated")
    assert disabled.detail == {"fields": ["enabled"]}
    # while disabled: the queue stays, new events are not queued for it
    await client.patch(f"{API}/devices/{device_id}", json={"name": "b"}, headers=owner.headers)
    assert [d["id"] for d in await _deliveries(client, owner.headers, made["id"])] == [queued["id"]]
    # a long back-off while it was failing: due at once when enabled again
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            update(webhook_endpoints)
            .where(webhook_endpoints.c.id == uuid.UUID(made["id"]))
            .values(failing_since=utcnow())
        )
        await conn.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.seq == int(queued["id"]))
            .values(next_attempt_at=utcnow().replace(year=2100), attempts=5)
        )
    on = await client.patch(path, json={"enabled": True}, headers=owner.headers)
    assert on.status_code == 200
    assert on.json()["enabled"] is True
    assert on.json()["disabled_reason"] is None
    assert on.json()["disabled_at"] is None
    assert on.json()["failing_since"] is None
    (enabled,) = await stored_events(app, action="webhook.enabled")
    assert enabled.target_id == made["id"]
    (pending,) = await _deliveries(client, owner.headers, made["id"], state="pending")
    assert pending["id"] == queued["id"]
    assert pending["next_attempt_at"] <= utcnow().isoformat().replace("+00:00", "Z")
    # enabling an enabled endpoint records nothing
    await client.patch(path, json={"enabled": True}, headers=owner.headers)
    assert len(await stored_events(app, action="webhook.enabled")) == 1
    assert len(await stored_events(app, action="webhook.updated")) == 1


async def test_deleting_an_endpoint_drops_its_deliveries(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    made = await _create(client, owner.headers)
    kept = await _create(client, owner.headers, url=f"{HOOK}/kept")
    for endpoint in (made, kept):
        await client.post(f"{API}/webhooks/{endpoint['id']}/test", headers=owner.headers)
    response = await client.delete(f"{API}/webhooks/{made['id']}", headers=owner.headers)
    assert response.status_code == 204
    gone = await client.get(f"{API}/webhooks/{made['id']}", headers=owner.headers)
    assert gone.status_code == 404
    again = await client.delete(f"{API}/webhooks/{made['id']}", headers=owner.headers)
    assert again.status_code == 404
    (event,) = await stored_events(app, action="webhook.deleted")
    assert event.detail == {"url": HOOK}
    async with runtime(app).db.reading() as conn:
        endpoints = select(webhook_deliveries.c.endpoint_id)
        assert set((await conn.execute(endpoints)).scalars()) == {uuid.UUID(kept["id"])}
        subs = select(func.count()).select_from(webhook_subscriptions)
        assert (await conn.execute(subs)).scalar_one() == 1
