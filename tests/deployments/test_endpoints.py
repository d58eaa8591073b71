"""The deployments API without a connected agent (both databases): checks, records, lists."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
from fastapi import FastAPI
from sqlalchemy import insert

from tests.support.api import signup
from tests.support.deployments import API, deploy, deployments_of, device_and_model
from tests.support.devices import create_device, runtime
from tests.support.models import nef, uploaded
from visiona.kit.schema import models


async def test_offline_device_is_502_and_a_failed_record(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device_id, _token, model_id, _ = await device_and_model(client, user)
    response = await deploy(client, user, device_id, model_id)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "device_offline"
    [record] = await deployments_of(client, user, device_id)
    assert response.json()["error"]["deployment"] == record
    assert record["status"] == "failed"
    assert record["model_id"] == model_id
    assert record["device_id"] == device_id
    assert record["error"] == "the device is not connected"
    assert record["finished_at"] is not None


async def test_chip_mismatch_is_409_and_records_nothing(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device_id, _token, model_id, _ = await device_and_model(client, user, chip="kl720")
    response = await deploy(client, user, device_id, model_id)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "chip_mismatch"
    assert "kl720" in response.json()["error"]["message"]
    assert await deployments_of(client, user, device_id) == []


async def test_device_without_a_type_is_a_chip_mismatch(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    created = await client.post(
        f"{API}/devices", json={"name": "No type", "serial_number": "SN-x"}, headers=user.headers
    )
    assert created.status_code == 201, created.text
    model = await uploaded(client, user, nef(1000))
    response = await deploy(client, user, created.json()["id"], str(model["id"]))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "chip_mismatch"


async def test_another_users_device_or_model_is_404(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    other = await signup(client)
    device_id, _token, model_id, _ = await device_and_model(client, owner)
    other_device, _t, other_model, _ = await device_and_model(client, other)

    for device, model in [(device_id, other_model), (other_device, model_id)]:
        response = await deploy(client, owner, device, model)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    listed = await client.get(f"{API}/devices/{other_device}/deployments", headers=owner.headers)
    assert listed.status_code == 404
    unknown = await deploy(client, owner, str(uuid.uuid4()), model_id)
    assert unknown.status_code == 404
    assert await deployments_of(client, owner, device_id) == []
    assert await deployments_of(client, other, other_device) == []


async def test_deleted_model_is_404(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device_id, _token, model_id, _ = await device_and_model(client, user)
    deleted = await client.delete(f"{API}/models/{model_id}", headers=user.headers)
    assert deleted.status_code == 204
    response = await deploy(client, user, device_id, model_id)
    assert response.status_code == 404


async def test_model_without_a_file_is_409(client: httpx.AsyncClient, app: FastAPI) -> None:
    user = await signup(client)
    device_id, _token, _model_id, _ = await device_and_model(client, user)
    bare = uuid.uuid4()
    now = datetime.now(UTC)
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            insert(models).values(
                id=bare,
                owner_user_id=uuid.UUID(user.id),
                org_id=uuid.UUID(user.org_id),
                name="builtin without file",
                target_chip="kl520",
                file_size=0,
                source="builtin",
                labels=[],
                created_at=now,
                updated_at=now,
            )
        )
    response = await deploy(client, user, device_id, str(bare))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "model_file_missing"


async def test_body_and_cursor_are_validated(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device = await create_device(client, user)
    bad = await client.post(
        f"{API}/devices/{device['id']}/deployments", json={}, headers=user.headers
    )
    assert bad.status_code == 422
    cursor = await client.get(
        f"{API}/devices/{device['id']}/deployments", params={"cursor": "nope"}, headers=user.headers
    )
    assert cursor.status_code == 422
    client.cookies.clear()  # the login cookie would authenticate the call
    anonymous = await client.get(f"{API}/devices/{device['id']}/deployments")
    assert anonymous.status_code == 401


async def test_list_pages_newest_first(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    device_id, _token, model_id, _ = await device_and_model(client, user)
    for _ in range(3):
        assert (await deploy(client, user, device_id, model_id)).status_code == 502
    every = await deployments_of(client, user, device_id)
    assert len(every) == 3
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await client.get(
            f"{API}/devices/{device_id}/deployments", params=params, headers=user.headers
        )
        assert page.status_code == 200
        seen += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [item["id"] for item in every]
    assert [d["created_at"] for d in every] == sorted(
        (d["created_at"] for d in every), reverse=True
    )


async def test_openapi_documents_both_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    path = spec["paths"]["/api/v1/devices/{device_id}/deployments"]
    post = path["post"]["responses"]
    assert "201" in post
    assert "chip_mismatch" in post["409"]["description"]
    assert "model_file_missing" in post["409"]["description"]
    assert "device_offline" in post["502"]["description"]
    assert "not_found" in post["404"]["description"]
    assert "404" in path["get"]["responses"]
