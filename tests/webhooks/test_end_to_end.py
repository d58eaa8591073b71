"""Webhooks end to end through the API: an endpoint created by `POST /webhooks`, a
device renamed, a test event — each reaches a real receiver that verifies the signature
with the secret the API returned once; the delivery log shows the attempts; an endpoint
disabled for failing keeps its queue and delivers it once enabled again. Both databases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

from testkit.live import LiveServer, serve_app
from tests.support.api import User, signup
from tests.support.devices import paired_device
from tests.support.receiver import Receiver
from tests.support.tunnel import wait_for
from visiona.kit.settings import Settings
from visiona.webhooks.queue import EXHAUSTED_REASON

API = "/api/v1"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The backend's settings with a fast dispatcher allowed to reach loopback."""
    return settings.model_copy(
        update={
            "webhook_dispatcher": True,
            "webhook_allow_private": True,
            "webhook_retry_schedule": "0,0.2,0.2",
            "webhook_poll_interval": 0.05,
            "webhook_timeout": 2.0,
            "webhook_lease_seconds": 5.0,
        }
    )


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, LiveServer[Starlette]]]:
    """A receiver verifying every signature, on 127.0.0.1 (port 0)."""
    hooks = Receiver()
    async with serve_app(hooks.app()) as server:
        yield hooks, server


async def _create(
    client: httpx.AsyncClient, user: User, hooks: Receiver, server: LiveServer[Starlette]
) -> tuple[str, str]:
    """An endpoint created through the API; its id and the receiver's path for it."""
    path = f"/hook/{uuid.uuid4().hex[:8]}"
    created = await client.post(
        f"{API}/webhooks",
        json={"url": f"{server.url}{path}", "events": ["device.*"]},
        headers=user.headers,
    )
    assert created.status_code == 201, created.text
    hooks.secrets[path] = created.json()["secret"]  # shown once: the receiver keeps it
    return created.json()["id"], path


async def _log(client: httpx.AsyncClient, user: User, webhook_id: str) -> list[dict[str, Any]]:
    listed = await client.get(f"{API}/webhooks/{webhook_id}/deliveries", headers=user.headers)
    assert listed.status_code == 200, listed.text
    items: list[dict[str, Any]] = listed.json()["items"]
    return items


async def test_a_rename_and_a_test_event_reach_the_receiver_signed_and_logged(
    app: FastAPI, client: httpx.AsyncClient, receiver: tuple[Receiver, LiveServer[Starlette]]
) -> None:
    del app
    hooks, server = receiver
    user = await signup(client)
    device = (await paired_device(client, user))["device_id"]
    webhook_id, path = await _create(client, user, hooks, server)

    renamed = await client.patch(
        f"{API}/devices/{device}", json={"name": "line-3"}, headers=user.headers
    )
    assert renamed.status_code == 200, renamed.text
    queued = await client.post(f"{API}/webhooks/{webhook_id}/test", headers=user.headers)
    assert queued.status_code == 202, queued.text

    async def both_arrived() -> bool:
        return len(hooks.ids(path)) >= 2

    await wait_for(both_arrived, limit=30)
    assert hooks.bad_signatures == 0
    rename, test = hooks.log
    assert rename.payload["type"] == "device.renamed"
    assert rename.payload["data"]["detail"]["to"] == "line-3"
    assert test.event_id == queued.json()["event_id"]
    assert test.payload["type"] == "webhook.test"

    async def logged() -> bool:
        return all(d["state"] == "delivered" for d in await _log(client, user, webhook_id))

    await wait_for(logged, limit=30)
    for delivery in await _log(client, user, webhook_id):
        assert delivery["attempts"] == 1
        assert delivery["last_status"] == 200
        assert delivery["last_response"] == "ok"
        assert delivery["last_latency_ms"] is not None
        assert delivery["last_error"] is None


async def test_an_endpoint_disabled_for_failing_delivers_its_queue_once_enabled_again(
    app: FastAPI, client: httpx.AsyncClient, receiver: tuple[Receiver, LiveServer[Starlette]]
) -> None:
    del app
    hooks, server = receiver
    user = await signup(client)
    device = (await paired_device(client, user))["device_id"]
    webhook_id, path = await _create(client, user, hooks, server)
    hooks.status = 500
    for name in ("a", "b"):
        renamed = await client.patch(
            f"{API}/devices/{device}", json={"name": name}, headers=user.headers
        )
        assert renamed.status_code == 200, renamed.text

    async def disabled() -> bool:
        shown = await client.get(f"{API}/webhooks/{webhook_id}", headers=user.headers)
        return shown.json()["enabled"] is False

    await wait_for(disabled, limit=30)
    shown = (await client.get(f"{API}/webhooks/{webhook_id}", headers=user.headers)).json()
    assert shown["disabled_reason"] == EXHAUSTED_REASON
    assert shown["failing_since"] is not None
    audit = await client.get(
        f"{API}/audit-events", params={"action": "webhook.disabled"}, headers=user.headers
    )
    assert [e["action"] for e in audit.json()["items"]].count("webhook.disabled") == 1
    failed, waiting = sorted(await _log(client, user, webhook_id), key=lambda d: int(d["id"]))
    assert failed["state"] == "failed"
    assert failed["attempts"] == 3
    assert failed["last_status"] == 500
    assert waiting["state"] == "pending"

    hooks.status = 200
    enabled = await client.patch(
        f"{API}/webhooks/{webhook_id}", json={"enabled": True}, headers=user.headers
    )
    assert enabled.status_code == 200, enabled.text

    async def delivered() -> bool:
        return len(hooks.ids(path)) >= 1

    await wait_for(delivered, limit=30)
    assert hooks.ids(path) == [waiting["event_id"]]
    assert hooks.log[0].payload["data"]["detail"]["to"] == "b"
