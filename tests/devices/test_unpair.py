"""Unpair: one transaction for the device and every token bound to it, then the hook."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.support.api import User, signup
from tests.support.devices import API, bearer, pair, paired_device, pairing_token, runtime
from visiona.kit.deps import DEVICE_REVOKED
from visiona.kit.runtime import DeviceHook, DeviceRevoked
from visiona.kit.schema import devices, pairing_tokens, session_tokens
from visiona.tokens import repository


async def _state(app: FastAPI, device_id: str) -> dict[str, Any]:
    """The device's deleted_at and the revoked_at of every token bound to it, read afresh."""
    dev = uuid.UUID(device_id)
    async with runtime(app).db.transaction() as conn:
        deleted_at = (
            await conn.execute(select(devices.c.deleted_at).where(devices.c.id == dev))
        ).scalar_one()
        pairing = list(
            (
                await conn.execute(
                    select(pairing_tokens.c.revoked_at).where(pairing_tokens.c.device_id == dev)
                )
            ).scalars()
        )
        sessions = list(
            (
                await conn.execute(
                    select(session_tokens.c.revoked_at).where(session_tokens.c.device_id == dev)
                )
            ).scalars()
        )
    return {"deleted_at": deleted_at, "pairing": pairing, "sessions": sessions}


async def _device_with_two_pairings(client: httpx.AsyncClient, user: User) -> dict[str, Any]:
    first = await paired_device(client, user)
    sn = (await client.get(f"{API}/devices/{first['device_id']}", headers=user.headers)).json()[
        "serial_number"
    ]
    second = await paired_device(client, user, sn)
    assert second["device_id"] == first["device_id"]
    first["other_session_token"] = second["session_token"]
    return first


def _also_on_revoked(app: FastAPI, hook: DeviceHook) -> None:
    """Add ``hook`` after the revocation hooks the composition root chose."""
    chosen = DEVICE_REVOKED.of(app)
    DEVICE_REVOKED.provide(app, DeviceRevoked.of([*chosen.hooks, hook]))


async def test_unpair_soft_deletes_and_revokes_every_bound_token(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    device = await _device_with_two_pairings(client, user)
    response = await client.delete(f"{API}/devices/{device['device_id']}", headers=user.headers)
    assert response.status_code == 204
    state = await _state(app, device["device_id"])
    assert state["deleted_at"] is not None
    assert len(state["pairing"]) == 2
    assert len(state["sessions"]) == 2
    assert all(at is not None for at in state["pairing"] + state["sessions"])
    for token in (device["session_token"], device["other_session_token"]):
        status = await client.post(
            f"{API}/agent/status", json={"usb_status": "online"}, headers=bearer(token)
        )
        assert status.status_code == 401
    again = await client.delete(f"{API}/devices/{device['device_id']}", headers=user.headers)
    assert again.status_code == 404


async def test_unpair_leaves_other_devices_tokens_alone(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    drop = await paired_device(client, user)
    keep = await paired_device(client, user)
    unused = await pairing_token(client, user)
    await client.delete(f"{API}/devices/{drop['device_id']}", headers=user.headers)
    state = await _state(app, keep["device_id"])
    assert state["deleted_at"] is None
    assert all(at is None for at in state["pairing"] + state["sessions"])
    status = await client.post(
        f"{API}/agent/status", json={"usb_status": "online"}, headers=bearer(keep["session_token"])
    )
    assert status.status_code == 204
    assert (await pair(client, unused["token"])).status_code == 201


async def test_unpair_is_all_or_nothing_when_a_step_fails(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step runs for real and then fails: the soft delete and the pairing-token
    revocation already executed in the same transaction must roll back with it."""
    user = await signup(client)
    device = await _device_with_two_pairings(client, user)
    before = await _state(app, device["device_id"])
    fired: list[uuid.UUID] = []

    async def record(device_id: uuid.UUID) -> None:
        fired.append(device_id)

    _also_on_revoked(app, record)
    real = repository.revoke_session_tokens_of_device

    async def fail_after(*args: Any, **kwargs: Any) -> int:
        await real(*args, **kwargs)
        raise RuntimeError("injected failure in the last unpair step")

    monkeypatch.setattr(repository, "revoke_session_tokens_of_device", fail_after)
    # the server answers 500 and re-raises for its host: keep the answer, not the raise
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as raw:
        response = await raw.delete(f"{API}/devices/{device['device_id']}", headers=user.headers)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    after = await _state(app, device["device_id"])
    assert after == before
    assert after["deleted_at"] is None
    assert fired == []
    monkeypatch.undo()
    status = await client.post(
        f"{API}/agent/status",
        json={"usb_status": "online"},
        headers=bearer(device["session_token"]),
    )
    assert status.status_code == 204


async def test_revocation_hook_fires_after_commit(client: httpx.AsyncClient, app: FastAPI) -> None:
    """The hook reads the database on another connection: it sees the committed unpair."""
    user = await signup(client)
    device = await paired_device(client, user)
    seen: list[dict[str, Any]] = []

    async def tunnel_closer(device_id: uuid.UUID) -> None:
        seen.append({"id": device_id, **(await _state(app, str(device_id)))})

    _also_on_revoked(app, tunnel_closer)
    response = await client.delete(f"{API}/devices/{device['device_id']}", headers=user.headers)
    assert response.status_code == 204
    assert len(seen) == 1
    assert seen[0]["id"] == uuid.UUID(device["device_id"])
    assert seen[0]["deleted_at"] is not None
    assert all(at is not None for at in seen[0]["sessions"])


async def test_revocation_hook_does_not_fire_when_nothing_was_revoked(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user, other = await signup(client), await signup(client)
    device = await paired_device(client, user)
    fired: list[uuid.UUID] = []

    async def record(device_id: uuid.UUID) -> None:
        fired.append(device_id)

    _also_on_revoked(app, record)
    foreign = await client.delete(f"{API}/devices/{device['device_id']}", headers=other.headers)
    assert foreign.status_code == 404
    unknown = await client.delete(f"{API}/devices/{uuid.uuid4()}", headers=user.headers)
    assert unknown.status_code == 404
    assert fired == []


async def test_a_failing_hook_does_not_undo_the_unpair(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    device = await paired_device(client, user)

    async def broken(_device_id: uuid.UUID) -> None:
        raise RuntimeError("tunnel hub exploded")

    _also_on_revoked(app, broken)
    response = await client.delete(f"{API}/devices/{device['device_id']}", headers=user.headers)
    assert response.status_code == 204
    assert (await _state(app, device["device_id"]))["deleted_at"] is not None


async def test_session_token_revocation_fires_the_hook_after_commit(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    device = await paired_device(client, user)
    seen: list[dict[str, Any]] = []

    async def tunnel_closer(device_id: uuid.UUID) -> None:
        seen.append({"id": device_id, **(await _state(app, str(device_id)))})

    _also_on_revoked(app, tunnel_closer)
    items = (
        await client.get(
            f"{API}/devices/{device['device_id']}/session-tokens", headers=user.headers
        )
    ).json()["items"]
    response = await client.delete(f"{API}/session-tokens/{items[0]['id']}", headers=user.headers)
    assert response.status_code == 204
    assert len(seen) == 1
    assert seen[0]["id"] == uuid.UUID(device["device_id"])
    assert seen[0]["deleted_at"] is None
    assert seen[0]["sessions"] == [seen[0]["sessions"][0]]
    assert seen[0]["sessions"][0] is not None
