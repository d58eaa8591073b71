"""The rollouts API on SQLite and PostgreSQL (devices registered by hand: offline)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI

from tests.support.api import User, error_code, signup
from tests.support.audit import actions
from tests.support.devices import API, create_device, runtime
from tests.support.models import nef, uploaded
from tests.support.orgs import acting, create_org, member
from tests.support.tunnel import wait_for
from visiona.devices import fleet_repository
from visiona.kit.clock import utcnow


async def _devices(client: httpx.AsyncClient, user: User, n: int, **tags: str) -> list[str]:
    ids = []
    for _ in range(n):
        device = await create_device(client, user)
        if tags:
            tagged = await client.put(
                f"{API}/devices/{device['id']}/tags", json={"tags": tags}, headers=user.headers
            )
            assert tagged.status_code == 200, tagged.text
        ids.append(str(device["id"]))
    return ids


async def _create(client: httpx.AsyncClient, user: User, **body: Any) -> httpx.Response:
    return await client.post(f"{API}/rollouts", json=body, headers=user.headers)


async def _rollout(client: httpx.AsyncClient, user: User, rollout_id: str) -> dict[str, Any]:
    response = await client.get(f"{API}/rollouts/{rollout_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _until(
    client: httpx.AsyncClient, user: User, rollout_id: str, check: Callable[[dict[str, Any]], bool]
) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return check(await _rollout(client, user, rollout_id))

    return probe


async def test_a_selector_rollout_plans_the_canary_and_waits_for_offline_devices(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    await _devices(client, user, 3, site="lab")
    await _devices(client, user, 1, site="home")
    model = await uploaded(client, user, nef(4096), chip="kl720")
    response = await _create(
        client, user, model_id=model["id"], selector="site=lab", canary=1, batch="50%"
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["state"] == "running"
    assert created["devices"] == 3
    assert created["batch"] == "50%"
    rollout_id = created["id"]
    await wait_for(
        _until(client, user, rollout_id, lambda r: r["counts"]["waiting"] == 1), limit=30
    )
    shown = await _rollout(client, user, rollout_id)
    assert shown["batches"][0]["batch"] == 0
    assert shown["batches"][0]["devices"] == 1
    assert shown["unbatched"] == 2
    waiting = await client.get(
        f"{API}/rollouts/{rollout_id}/devices", params={"state": "waiting"}, headers=user.headers
    )
    assert [d["batch"] for d in waiting.json()["items"]] == [0]
    # a device that matches later joins the open rollout
    await _devices(client, user, 1, site="lab")
    await wait_for(_until(client, user, rollout_id, lambda r: r["devices"] == 4), limit=30)
    assert await actions(app, action="rollout.created") == ["rollout.created"]
    assert await actions(app, action="rollout.batch_started") == ["rollout.batch_started"]


async def test_devices_already_running_the_model_are_skipped_and_it_completes(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    ids = await _devices(client, user, 2)
    model = await uploaded(client, user, nef(2048, seed=3), chip="kl720")
    async with runtime(app).db.transaction() as conn:
        for device_id in ids:
            await fleet_repository.set_current_model(
                conn, uuid.UUID(device_id), uuid.UUID(model["id"]), model["sha256"], utcnow()
            )
    created = (await _create(client, user, model_id=model["id"], device_ids=ids)).json()
    await wait_for(
        _until(client, user, created["id"], lambda r: r["state"] == "completed"), limit=30
    )
    done = await _rollout(client, user, created["id"])
    assert done["counts"]["skipped"] == 2
    assert done["finished_at"] is not None
    assert await actions(app, action="rollout.completed") == ["rollout.completed"]
    assert await actions(app, action="rollout.batch_finished") == ["rollout.batch_finished"]
    rolled = await client.post(f"{API}/rollouts/{created['id']}/rollback", headers=user.headers)
    assert rolled.status_code == 201, rolled.text
    assert rolled.json()["rollback_of"] == created["id"]
    assert rolled.json()["devices"] == 0  # none succeeded: nothing to return


async def test_pause_resume_cancel_and_their_conflicts(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    ids = await _devices(client, user, 2)
    model = await uploaded(client, user, nef(1024), chip="kl720")
    rollout_id = (await _create(client, user, model_id=model["id"], device_ids=ids)).json()["id"]

    async def act(action: str) -> httpx.Response:
        return await client.post(f"{API}/rollouts/{rollout_id}/{action}", headers=user.headers)

    paused = await act("pause")
    assert paused.json()["state"] == "paused"
    assert paused.json()["reason"] == "paused by a user"
    assert (await act("pause")).status_code == 200
    assert (await act("resume")).json()["state"] == "running"
    refused = await act("rollback")
    assert refused.status_code == 409
    assert error_code(refused) == "rollout_state"
    cancelled = await act("cancel")
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["counts"]["cancelled"] == 2
    again = await act("cancel")
    assert again.status_code == 409
    assert error_code(again) == "rollout_state"
    assert error_code(await act("resume")) == "rollout_state"
    recorded = await actions(app, target_type="rollout")
    for action in ("rollout.created", "rollout.paused", "rollout.resumed", "rollout.cancelled"):
        assert recorded.count(action) == 1, recorded


async def test_bad_requests_are_refused_with_their_codes(client: httpx.AsyncClient) -> None:
    user, other = await signup(client), await signup(client)
    (mine,) = await _devices(client, user, 1)
    (theirs,) = await _devices(client, other, 1)
    kl520 = (
        await client.post(
            f"{API}/devices",
            json={"name": "old", "serial_number": "SN-520", "device_type": "kl520"},
            headers=user.headers,
        )
    ).json()
    model = await uploaded(client, user, nef(1024), chip="kl720")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"selector": "site=lab", "device_ids": [mine]}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"selector": "site in lab"}, 400, "invalid_selector"),
        ({"device_ids": [theirs]}, 404, "not_found"),
        ({"device_ids": [str(kl520["id"])]}, 409, "chip_mismatch"),
        ({"device_ids": [mine], "batch": "0%"}, 422, "validation_error"),
        ({"device_ids": [mine], "max_failure_percent": 101}, 422, "validation_error"),
        ({"device_ids": [mine], "deadline": "2001-01-01T00:00:00Z"}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        response = await _create(client, user, model_id=model["id"], **body)
        assert (response.status_code, error_code(response)) == (status, code), body
    foreign = await _create(client, other, model_id=model["id"], device_ids=[theirs])
    assert foreign.status_code == 404  # another's model
    rollout_id = (await _create(client, user, model_id=model["id"], device_ids=[mine])).json()["id"]
    for path in ("", "/devices"):
        response = await client.get(f"{API}/rollouts/{rollout_id}{path}", headers=other.headers)
        assert response.status_code == 404
    assert (
        await client.post(f"{API}/rollouts/{rollout_id}/pause", headers=other.headers)
    ).status_code == 404
    listed = (await client.get(f"{API}/rollouts", headers=user.headers)).json()
    assert [r["id"] for r in listed["items"]] == [rollout_id]
    assert (await client.get(f"{API}/rollouts", headers=other.headers)).json()["items"] == []


async def _team_rollout_setup(
    client: httpx.AsyncClient, owner: User, team: str
) -> tuple[str, dict[str, Any]]:
    """A kl720 device of ``team`` and the body of a rollout of a kl720 model to it."""
    headers = acting(owner, team)
    device = await client.post(
        f"{API}/devices",
        json={"name": "t", "serial_number": f"T-{uuid.uuid4().hex[:8]}", "device_type": "kl720"},
        headers=headers,
    )
    assert device.status_code == 201, device.text
    model = await client.post(
        f"{API}/models",
        data={"target_chip": "kl720"},
        files={"file": ("m.nef", nef(512), "application/octet-stream")},
        headers=headers,
    )
    assert model.status_code == 201, model.text
    device_id = str(device.json()["id"])
    return device_id, {"model_id": model.json()["id"], "device_ids": [device_id]}


async def test_a_viewer_reads_the_teams_rollouts_but_cannot_create_or_steer_one(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    viewer = await member(client, owner, team, "viewer")
    operator = await member(client, owner, team, "operator")
    _, body = await _team_rollout_setup(client, owner, team)
    refused = await client.post(f"{API}/rollouts", json=body, headers=acting(viewer, team))
    assert refused.status_code == 403
    assert error_code(refused) == "forbidden"
    assert "deploy" in refused.json()["error"]["message"]
    created = await client.post(f"{API}/rollouts", json=body, headers=acting(operator, team))
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    seen = await client.get(f"{API}/rollouts/{rollout_id}", headers=acting(viewer, team))
    assert seen.status_code == 200
    listed = await client.get(f"{API}/rollouts", headers=acting(viewer, team))
    assert [r["id"] for r in listed.json()["items"]] == [rollout_id]
    for action in ("pause", "cancel"):
        steered = await client.post(
            f"{API}/rollouts/{rollout_id}/{action}", headers=acting(viewer, team)
        )
        assert (steered.status_code, error_code(steered)) == (403, "forbidden"), action
    # the team's rollout is not in its members' personal organisations
    personal = await client.get(f"{API}/rollouts", headers=operator.headers)
    assert personal.json()["items"] == []


async def test_another_organisations_rollout_is_404_to_its_owner_acting_elsewhere(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    _, body = await _team_rollout_setup(client, owner, team)
    created = await client.post(f"{API}/rollouts", json=body, headers=acting(owner, team))
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    # the same user acting in its personal organisation: the team's rollout is not there
    for path in ("", "/devices"):
        response = await client.get(f"{API}/rollouts/{rollout_id}{path}", headers=owner.headers)
        assert (response.status_code, error_code(response)) == (404, "not_found"), path
    paused = await client.post(f"{API}/rollouts/{rollout_id}/pause", headers=owner.headers)
    assert (paused.status_code, error_code(paused)) == (404, "not_found")
    # nor can a personal-organisation rollout name the team's model or device
    foreign = await client.post(f"{API}/rollouts", json=body, headers=owner.headers)
    assert (foreign.status_code, error_code(foreign)) == (404, "not_found")


async def test_openapi_declares_the_rollout_and_enrollment_routes_and_their_codes(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/api/v1/rollouts"]) == {"get", "post"}
    created = paths["/api/v1/rollouts"]["post"]["responses"]
    assert "invalid_selector" in created["400"]["description"]
    assert "chip_mismatch" in created["409"]["description"]
    assert "model_file_missing" in created["409"]["description"]
    assert "get" in paths["/api/v1/rollouts/{rollout_id}"]
    listing = paths["/api/v1/rollouts/{rollout_id}/devices"]["get"]
    assert "state" in {p["name"] for p in listing["parameters"]}
    for action in ("pause", "resume", "cancel", "rollback"):
        responses = paths[f"/api/v1/rollouts/{{rollout_id}}/{action}"]["post"]["responses"]
        assert "rollout_state" in responses["409"]["description"], action
        assert "not_found" in responses["404"]["description"], action
    assert set(paths["/api/v1/enrollment-keys"]) == {"get", "post"}
    assert "delete" in paths["/api/v1/enrollment-keys/{key_id}"]
    enroll = paths["/api/v1/agent/enroll"]["post"]["responses"]
    assert {"201", "401", "429", "422"} <= set(enroll)


async def test_at_the_deadline_offline_devices_are_cancelled_and_it_fails(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    ids = await _devices(client, user, 2)
    model = await uploaded(client, user, nef(1024, seed=9), chip="kl720")
    deadline = (utcnow() + timedelta(seconds=3)).isoformat()
    created = await _create(client, user, model_id=model["id"], device_ids=ids, deadline=deadline)
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    await wait_for(_until(client, user, rollout_id, lambda r: r["state"] == "failed"), limit=30)
    failed = await _rollout(client, user, rollout_id)
    assert failed["counts"]["cancelled"] == 2
    assert failed["reason"] == "the deadline passed with 2 device(s) not deployed"
    devices = await client.get(f"{API}/rollouts/{rollout_id}/devices", headers=user.headers)
    assert {d["error"] for d in devices.json()["items"]} == {"the deadline passed"}
    assert await actions(app, action="rollout.failed") == ["rollout.failed"]
