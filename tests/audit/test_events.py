"""Every action of the catalogue is produced by the change it records, on SQLite and PostgreSQL.

Each test drives the real API (in process, or a live server with a tunnel) and reads
the trail back through ``GET /api/v1/audit-events``; a last check asserts that every
catalogued action was read back by a test here.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from testkit.live import LiveServer, serve_app
from tests.support.api import PASSWORD, User, signup
from tests.support.audit import PRODUCED, only, stored_events, trail
from tests.support.deployments import Received, answer, deploy, device_and_model, read_request
from tests.support.devices import API, bearer, create_device, paired_device, pairing_token
from tests.support.models import nef, uploaded
from tests.support.tunnel import connect_agent, wait_for
from visiona.app import create_app
from visiona.audit.catalogue import ACTIONS
from visiona.kit.runtime import Runtime
from visiona.kit.schema import devices
from visiona.kit.settings import Settings
from visiona.kit.tokens import hash_token
from visiona.tunnel.dependencies import HUB
from visiona.tunnel.hub import RESTART_REASON
from visiona.yamux import Stream

#: Produced and asserted in other modules: tests/agent/test_policy.py (agent-side
#: refusals), tests/agent/test_deploy.py (a real agent without a hook),
#: tests/tunnel/test_conflict.py, tests/tunnel/test_tcp_endpoints.py (TCP forwards),
#: tests/orgs/test_orgs.py (members and invitations), tests/devices/test_tags.py (tags),
#: tests/enrollment/ (enrollment keys and enrolments), tests/rollouts/ (rollouts: the
#: scheduler's batches need agents or devices brought online).
_ELSEWHERE = {
    "proxy.forbidden_by_agent",
    "deployment.stored",
    "tunnel.conflict",
    "forward.opened",
    "forward.closed",
    "forward.refused",
    # tests/orgs/test_orgs.py: the membership events of a team
    "member.invited",
    "member.joined",
    "member.role_changed",
    "member.removed",
    "member.left",
    "invitation.revoked",
    # tests/devices/test_tags.py: tags set and removed
    "device.tagged",
    "enrollment_key.created",
    "enrollment_key.revoked",
    "device.enrolled",
    "rollout.created",
    "rollout.batch_started",
    "rollout.batch_finished",
    "rollout.paused",
    "rollout.resumed",
    "rollout.cancelled",
    "rollout.completed",
    "rollout.failed",
    # tests/apikeys/test_api_keys.py: a key created, used and revoked
    "api_key.created",
    "api_key.revoked",
    # tests/webhooks/: endpoints created, edited, deleted, disabled by failures, enabled
    "webhook.created",
    "webhook.updated",
    "webhook.deleted",
    "webhook.disabled",
    "webhook.enabled",
}


def assert_no_secret(text: str, *secrets: str) -> None:
    """None of ``secrets`` nor their hashes appear in ``text``."""
    for secret in secrets:
        assert secret not in text
        assert hash_token(secret) not in text


async def test_user_registered_signed_in_failed_and_signed_out(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    wrong = await client.post(
        f"{API}/auth/login", json={"email": user.email.upper(), "password": "not it"}
    )
    assert wrong.status_code == 401
    out = await client.post(f"{API}/auth/logout", headers=user.headers)
    assert out.status_code == 204
    login = await client.post(f"{API}/auth/login", json={"email": user.email, "password": PASSWORD})
    user = User(id=user.id, email=user.email, token=login.json()["token"])
    items = await trail(client, user)
    assert [item["action"] for item in reversed(items)] == [
        "user.registered",
        "org.created",
        "user.signed_in",
        "user.sign_in_failed",
        "user.signed_out",
        "user.signed_in",
    ]
    failed = only(items, "user.sign_in_failed")
    assert failed["detail"] == {"email": user.email.upper()}  # as typed
    assert failed["target_type"] == "user"
    assert failed["target_id"] == user.id
    assert failed["actor_id"] is None  # whoever typed it was not authenticated
    for item in items:
        assert item["actor_type"] == "user"
        assert item["client_addr"] == "127.0.0.1"
        assert item["request_id"]
    assert_no_secret(json.dumps(items), PASSWORD, "not it", user.token)


async def test_a_failed_sign_in_for_an_unknown_email_belongs_to_nobody(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    email = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    response = await client.post(f"{API}/auth/login", json={"email": email, "password": "x" * 12})
    assert response.status_code == 401
    (event,) = [
        e
        for e in await stored_events(app, action="user.sign_in_failed")
        if e.detail == {"email": email}
    ]
    assert event.owner_id is None
    assert event.target_id is None
    assert event.actor_id is None


async def test_pairing_device_and_session_token_events(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    token = await pairing_token(client, user)
    revoked = await pairing_token(client, user)
    assert (
        await client.delete(f"{API}/pairing-tokens/{revoked['id']}", headers=user.headers)
    ).status_code == 204
    paired = (
        await client.post(
            f"{API}/agent/pair",
            json={
                "pairing_token": token["token"],
                "serial_number": "SN-AUDIT-1",
                "device_type": "kl520",
                "name": "Bench",
            },
        )
    ).json()
    device_id = paired["device_id"]
    renewed = (
        await client.post(f"{API}/agent/session/renew", headers=bearer(paired["session_token"]))
    ).json()
    assert (
        await client.delete(
            f"{API}/session-tokens/{renewed['session_token_id']}", headers=user.headers
        )
    ).status_code == 204
    renamed = await client.patch(
        f"{API}/devices/{device_id}", json={"name": "Lab"}, headers=user.headers
    )
    assert renamed.status_code == 200
    by_hand = await create_device(client, user)
    second = await paired_device(client, user)
    assert (
        await client.delete(f"{API}/devices/{second['device_id']}", headers=user.headers)
    ).status_code == 204

    items = await trail(client, user)
    created = {i["target_id"] for i in items if i["action"] == "pairing_token.created"}
    assert created == {token["id"], revoked["id"], second["pairing_token_id"]}
    assert only(items, "pairing_token.revoked")["target_id"] == revoked["id"]
    used = [i for i in items if i["action"] == "pairing_token.used" and i["device_id"] == device_id]
    assert used[0]["target_id"] == token["id"]
    assert used[0]["actor_type"] == "device"
    assert used[0]["actor_id"] == device_id

    mine = await trail(client, user, target_type="device", target_id=device_id)
    assert [item["action"] for item in reversed(mine)] == [
        "device.created",
        "device.paired",
        "device.renamed",
    ]
    assert only(mine, "device.created")["detail"] == {
        "via": "pairing",
        "serial_number": "SN-AUDIT-1",
    }
    assert only(mine, "device.paired")["detail"] == {
        "pairing_token_id": token["id"],
        "serial_number": "SN-AUDIT-1",
    }
    assert only(mine, "device.renamed")["detail"] == {"from": "Bench", "to": "Lab"}
    hand = await trail(client, user, target_type="device", target_id=by_hand["id"])
    assert only(hand, "device.created")["detail"]["via"] == "api"
    assert only(hand, "device.created")["actor_type"] == "user"

    sessions = await trail(client, user, target_type="session_token")
    issued = [i for i in sessions if i["action"] == "session_token.issued"]
    assert any(i["target_id"] == paired["session_token_id"] for i in issued)
    renewal = only(sessions, "session_token.renewed")
    assert renewal["target_id"] == renewed["session_token_id"]
    assert renewal["detail"] == {"previous_id": paired["session_token_id"]}
    assert only(sessions, "session_token.revoked")["target_id"] == renewed["session_token_id"]

    unpaired = only(await trail(client, user, action="device.unpaired"), "device.unpaired")
    assert unpaired["target_id"] == second["device_id"]
    assert unpaired["detail"] == {
        "revoked_pairing_tokens": [second["pairing_token_id"]],
        "revoked_session_tokens": [second["session_token_id"]],
    }
    assert_no_secret(
        json.dumps(items),
        token["token"],
        revoked["token"],
        paired["session_token"],
        renewed["session_token"],
    )


async def test_model_events(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    model = await uploaded(client, user, nef(1000), name="Face")
    model_id = str(model["id"])
    replaced = await client.put(
        f"{API}/models/{model_id}/file",
        headers=user.headers,
        files={"file": ("model.nef", nef(2000, seed=1), "application/octet-stream")},
    )
    assert replaced.status_code == 200, replaced.text
    assert (
        await client.patch(f"{API}/models/{model_id}", json={"name": "Faces"}, headers=user.headers)
    ).status_code == 200
    assert (
        await client.patch(f"{API}/models/{model_id}", json={"labels": ["a"]}, headers=user.headers)
    ).status_code == 200  # labels only: not a rename
    assert (
        await client.delete(f"{API}/models/{model_id}", headers=user.headers)
    ).status_code == 204
    items = await trail(client, user, target_type="model", target_id=model_id)
    assert [item["action"] for item in reversed(items)] == [
        "model.uploaded",
        "model.file_replaced",
        "model.renamed",
        "model.deleted",
    ]
    assert only(items, "model.uploaded")["detail"] == {
        "name": "Face",
        "target_chip": "kl520",
        "file_size": 1000,
    }
    assert only(items, "model.file_replaced")["detail"] == {"file_size": 2000}
    assert only(items, "model.renamed")["detail"] == {"from": "Face", "to": "Faces"}
    assert only(items, "model.deleted")["detail"] == {"name": "Faces"}


def _hub_runtime(live: LiveServer) -> Runtime:
    runtime: Runtime = live.app.state.runtime
    return runtime


async def _online(live: LiveServer, device_id: str) -> None:
    async def up() -> bool:
        return HUB.of(live.app).get(uuid.UUID(device_id)) is not None

    await wait_for(up)


async def _events_settle(http: httpx.AsyncClient, user: User, device_id: str, count: int) -> None:
    """Wait until the device's history holds ``count`` tunnel events (the end is async)."""

    async def enough() -> bool:
        items = await trail(http, user, target_type="device", target_id=device_id)
        return sum(bool(item["action"].startswith("tunnel.")) for item in items) >= count

    await wait_for(enough)


async def test_tunnel_connected_superseded_disconnected_and_closed_revoked(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device = await paired_device(http, user)
    device_id, token = device["device_id"], device["session_token"]
    async with connect_agent(live, token) as first:
        await _online(live, device_id)
        async with connect_agent(live, token):
            await wait_for(first.closed.wait)  # the older one was closed 4409
            await _events_settle(http, user, device_id, 3)  # connected, superseded, connected
        await _events_settle(http, user, device_id, 4)  # the newer one disconnected
    async with connect_agent(live, token) as last:
        await _events_settle(http, user, device_id, 5)
        revoke = await http.delete(
            f"{API}/session-tokens/{device['session_token_id']}", headers=user.headers
        )
        assert revoke.status_code == 204
        await wait_for(last.closed.wait)
        await _events_settle(http, user, device_id, 6)
    items = await trail(http, user, target_type="device", target_id=device_id)
    tunnel = [item for item in reversed(items) if item["action"].startswith("tunnel.")]
    actions = [item["action"] for item in tunnel]
    assert actions[0] == "tunnel.connected"
    assert sorted(actions[1:3]) == ["tunnel.connected", "tunnel.superseded"]
    assert actions[3:] == ["tunnel.disconnected", "tunnel.connected", "tunnel.closed_revoked"]
    connected = tunnel[0]
    assert connected["actor_type"] == "device"
    assert connected["client_addr"] == "127.0.0.1"
    assert connected["detail"]["session_token_id"] == device["session_token_id"]
    assert tunnel[3]["actor_type"] == "device"  # the agent went away by itself
    assert tunnel[3]["detail"]["reason"]
    assert tunnel[5]["actor_type"] == "system"
    assert_no_secret(json.dumps(items), token)


async def test_deployment_requested_succeeded_and_failed(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token, model_id, _content = await device_and_model(http, user, 10_000)
    offline = await deploy(http, user, device_id, model_id)
    assert offline.status_code == 502

    async def agent(stream: Stream) -> None:
        await read_request(stream, Received())
        answer(stream, 200, json.dumps({"model_id": model_id}).encode())

    async with connect_agent(live, token, agent):
        await _online(live, device_id)
        done = await deploy(http, user, device_id, model_id)
    assert done.status_code == 201, done.text
    items = await trail(http, user, target_type="deployment")
    ok = only(items, "deployment.succeeded")
    assert ok["target_id"] == done.json()["id"]
    assert ok["device_id"] == device_id
    assert ok["actor_type"] == "system"
    assert ok["detail"] == {"model_id": model_id}
    failed = only(items, "deployment.failed")
    assert failed["detail"] == {"model_id": model_id, "reason": "the device is not connected"}
    requested = [item for item in items if item["action"] == "deployment.requested"]
    assert {item["target_id"] for item in requested} == {failed["target_id"], ok["target_id"]}
    assert all(item["actor_type"] == "user" for item in requested)


async def test_a_tunnel_left_connected_by_a_crash_is_recorded_as_ended_at_start_up(
    settings: Settings,
) -> None:
    app = create_app(settings)
    async with serve_app(app) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        user = await signup(http)
        device = await paired_device(http, user)
        async with _hub_runtime(live).db.transaction() as conn:  # as a crashed run leaves it
            await conn.execute(
                update(devices)
                .where(devices.c.id == uuid.UUID(device["device_id"]))
                .values(remote_status="online")
            )
    restarted = serve_app(create_app(settings), settings)
    async with restarted as live, httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        # sign in again: on SQLite the web sessions lived in the previous process
        login = await http.post(
            f"{API}/auth/login", json={"email": user.email, "password": PASSWORD}
        )
        user = User(id=user.id, email=user.email, token=login.json()["token"])
        ended = await trail(http, user, action="tunnel.disconnected")
    assert [(e["device_id"], e["actor_type"]) for e in ended] == [(device["device_id"], "system")]
    assert ended[0]["detail"] == {"reason": RESTART_REASON}


def test_every_catalogued_action_was_produced_by_a_test_here(
    request: pytest.FixtureRequest,
) -> None:
    """A new action in the catalogue needs a test here that produces it (this one runs last)."""
    defined = {name for name in globals() if name.startswith("test_")} - {request.function.__name__}
    selected = {
        item.function.__name__
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.path == request.path
    }
    if not defined <= selected:
        pytest.skip("needs the whole module: it checks what the other tests produced")
    assert set(ACTIONS) - _ELSEWHERE - PRODUCED == set()
