"""The agent's pair exchange, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from tests.support.api import error_code, signup
from tests.support.devices import (
    API,
    bearer,
    pair,
    paired_device,
    pairing_token,
    runtime,
    serial,
    set_pairing_expiry,
)
from visiona.kit.deps import RUNTIME
from visiona.kit.schema import pairing_tokens, session_tokens
from visiona.kit.tokens import hash_token


async def test_pair_creates_device_and_issues_session_token(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    token = await pairing_token(client, user)
    sn = serial()
    response = await pair(client, token["token"], sn, name="Kitchen PC")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["session_token"].startswith("vst_")
    assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC) + timedelta(days=89)
    device = await client.get(f"{API}/devices/{body['device_id']}", headers=user.headers)
    assert device.status_code == 200
    assert device.json()["serial_number"] == sn
    assert device.json()["name"] == "Kitchen PC"
    assert device.json()["device_type"] == "kl520"
    assert device.json()["paired_at"] is not None
    assert device.json()["remote_status"] == "offline"
    assert device.json()["status"] == "unknown"


async def test_pair_marks_token_used_and_bound_and_links_session(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    token = await pairing_token(client, user)
    body = (await pair(client, token["token"])).json()
    listed = (await client.get(f"{API}/pairing-tokens", headers=user.headers)).json()["items"]
    (row,) = [item for item in listed if item["id"] == token["id"]]
    assert row["used_at"] is not None
    assert row["device_id"] == body["device_id"]
    async with runtime(app).db.transaction() as conn:
        stored = (
            await conn.execute(
                select(session_tokens).where(
                    session_tokens.c.token_hash == hash_token(body["session_token"])
                )
            )
        ).one()
    assert stored.parent_token_hash == hash_token(token["token"])
    assert str(stored.pairing_token_id) == token["id"]
    assert str(stored.device_id) == body["device_id"]


async def test_plaintext_tokens_are_never_stored(client: httpx.AsyncClient, app: FastAPI) -> None:
    user = await signup(client)
    token = await pairing_token(client, user)
    body = (await pair(client, token["token"])).json()
    async with runtime(app).db.transaction() as conn:
        hashes = set((await conn.execute(select(pairing_tokens.c.token_hash))).scalars())
        hashes |= set((await conn.execute(select(session_tokens.c.token_hash))).scalars())
    assert token["token"] not in hashes
    assert body["session_token"] not in hashes
    assert hash_token(token["token"]) in hashes
    assert hash_token(body["session_token"]) in hashes


async def test_used_pairing_token_is_rejected(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    token = await pairing_token(client, user)
    assert (await pair(client, token["token"])).status_code == 201
    again = await pair(client, token["token"])
    assert again.status_code == 401
    assert error_code(again) == "unauthorized"


async def test_every_bad_pairing_token_gets_the_same_401(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    used = await pairing_token(client, user)
    assert (await pair(client, used["token"])).status_code == 201
    expired = await pairing_token(client, user)
    await set_pairing_expiry(app, expired["id"], datetime.now(UTC) - timedelta(seconds=1))
    revoked = await pairing_token(client, user)
    deleted = await client.delete(f"{API}/pairing-tokens/{revoked['id']}", headers=user.headers)
    assert deleted.status_code == 204
    candidates = {
        "used": used["token"],
        "expired": expired["token"],
        "revoked": revoked["token"],
        "unknown": "vpt_" + "A" * 43,
        "wrong prefix": "vst_" + "A" * 43,
        "garbage": "hello",
        "empty": "",
    }
    responses = {label: await pair(client, token) for label, token in candidates.items()}
    bodies = {label: (r.status_code, r.json()) for label, r in responses.items()}
    first = bodies["unknown"]
    assert first[0] == 401
    assert first[1]["error"]["code"] == "unauthorized"
    assert all(value == first for value in bodies.values()), bodies


async def test_rejected_exchange_changes_nothing(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    token = await pairing_token(client, user)
    await client.delete(f"{API}/pairing-tokens/{token['id']}", headers=user.headers)
    assert (await pair(client, token["token"])).status_code == 401
    devices = (await client.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert devices == []


async def test_pair_reuses_the_owners_live_device_with_the_same_serial(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    sn = serial()
    first = await paired_device(client, user, sn)
    second = await paired_device(client, user, sn)
    assert second["device_id"] == first["device_id"]
    assert second["session_token"] != first["session_token"]
    items = (await client.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert [item["id"] for item in items] == [first["device_id"]]


async def test_same_serial_for_two_owners_is_two_devices(client: httpx.AsyncClient) -> None:
    alice, bob = await signup(client), await signup(client)
    sn = serial()
    a = await paired_device(client, alice, sn)
    b = await paired_device(client, bob, sn)
    assert a["device_id"] != b["device_id"]


async def test_pair_with_missing_fields_is_a_validation_error(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{API}/agent/pair", json={"pairing_token": "vpt_x"})
    assert response.status_code == 422
    assert error_code(response) == "validation_error"


async def test_pair_is_rate_limited_per_client_address(
    app: FastAPI,
) -> None:
    rt = runtime(app)
    RUNTIME.provide(
        app, dataclasses.replace(rt, settings=rt.settings.model_copy(update={"pair_rate_limit": 3}))
    )
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    other = "192.0.2." + str(uuid.uuid4().int % 250)
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    other_transport = httpx.ASGITransport(app=app, client=(other, 40000))
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as agent,
        httpx.AsyncClient(transport=other_transport, base_url="http://testserver") as neighbour,
    ):
        # a fresh per-test key space: earlier runs against the shared Redis used other addresses
        statuses = [(await pair(agent, "vpt_" + "B" * 43)).status_code for _ in range(4)]
        limited = await pair(agent, "vpt_" + "B" * 43)
        elsewhere = await pair(neighbour, "vpt_" + "B" * 43)
    assert statuses == [401, 401, 401, 429]
    assert limited.status_code == 429
    assert error_code(limited) == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert elsewhere.status_code == 401


async def test_eight_concurrent_exchanges_of_one_token_have_one_winner(
    client: httpx.AsyncClient, backend: str
) -> None:
    """The conditional UPDATE serialises racers (row lock on PostgreSQL, the write lock on
    SQLite): one 201, seven identical 401s, one device, one session token."""
    user = await signup(client)
    token = await pairing_token(client, user)
    sn = serial()
    responses = await asyncio.gather(*(pair(client, token["token"], sn) for _ in range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [401] * 7, (backend, [r.text for r in responses])
    losers = {r.text for r in responses if r.status_code == 401}
    assert len(losers) == 1
    winner = next(r for r in responses if r.status_code == 201).json()
    items = (await client.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert [item["id"] for item in items] == [winner["device_id"]]
    sessions = await client.get(
        f"{API}/devices/{winner['device_id']}/session-tokens", headers=user.headers
    )
    assert len(sessions.json()["items"]) == 1
    status = await client.post(
        f"{API}/agent/status",
        json={"usb_status": "online"},
        headers=bearer(winner["session_token"]),
    )
    assert status.status_code == 204


async def test_concurrent_pairs_of_one_serial_with_different_tokens_share_one_device(
    client: httpx.AsyncClient,
) -> None:
    """Find-or-create respects the partial unique index under concurrency: the second
    insert waits for the first and then re-uses its row instead of failing."""
    user = await signup(client)
    tokens = [await pairing_token(client, user) for _ in range(4)]
    sn = serial()
    responses = await asyncio.gather(*(pair(client, t["token"], sn) for t in tokens))
    assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
    assert len({r.json()["device_id"] for r in responses}) == 1
    items = (await client.get(f"{API}/devices", headers=user.headers)).json()["items"]
    assert len(items) == 1
