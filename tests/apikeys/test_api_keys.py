"""API keys over HTTP: shown once and stored hashed, scopes within the creator's role,
expiry and revocation (within a second on every node), audit naming the key, batched
``last_used_at``, the rate limit, and never a key in the logs. On SQLite and
PostgreSQL (with Redis)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from datetime import datetime, timedelta

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import event, select, update

from tests.support.api import error_code, signup
from tests.support.apikeys import create_key, key_headers
from tests.support.audit import stored_events
from tests.support.devices import API, runtime, serial
from tests.support.models import nef
from tests.support.orgs import acting, create_org, member
from tests.support.settings import LIFESPAN_TIMEOUT
from visiona.apikeys import service
from visiona.apikeys.access import LOCAL_TTL, TTL
from visiona.apikeys.dependencies import API_KEYS
from visiona.app import create_app
from visiona.audit.service import Actor
from visiona.kit.clock import utcnow
from visiona.kit.errors import ForbiddenError
from visiona.kit.schema import api_keys
from visiona.kit.settings import Settings
from visiona.orgs.permissions import Permission, Role, permissions_of


async def _device(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    made = await client.post(
        f"{API}/devices",
        json={"name": "d", "serial_number": serial(), "device_type": "kl520"},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def test_a_key_is_shown_once_and_stored_as_its_sha256(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    made = await create_key(client, owner, ["read", "deploy"], days=7)
    key = made["key"]
    assert key.startswith("vak_")
    assert made["scopes"] == ["deploy", "read"]
    assert made["state"] == "active"
    assert key.startswith(made["prefix"])
    listed = await client.get(f"{API}/api-keys", headers=owner.headers)
    assert listed.status_code == 200
    (item,) = listed.json()["items"]
    assert item["id"] == made["id"]
    assert "key" not in item
    assert key not in listed.text
    async with runtime(app).db.reading() as conn:
        row = (await conn.execute(select(api_keys))).mappings().one()
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in {str(v) for v in row.values()}
    assert timedelta(days=7) - (row["expires_at"] - row["created_at"]) < timedelta(seconds=1)


async def test_expires_in_days_is_1_to_365_default_90(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    for days in (0, 366):
        response = await client.post(
            f"{API}/api-keys",
            json={"name": "x", "scopes": ["read"], "expires_in_days": days},
            headers=owner.headers,
        )
        assert response.status_code == 422
    for body in ({"name": "x", "scopes": ["root"]}, {"name": "x", "scopes": []}):
        response = await client.post(f"{API}/api-keys", json=body, headers=owner.headers)
        assert response.status_code == 422
    default = await client.post(
        f"{API}/api-keys", json={"name": "x", "scopes": ["read"]}, headers=owner.headers
    )
    assert default.status_code == 201
    made = default.json()
    lifetime = datetime.fromisoformat(made["expires_at"]) - datetime.fromisoformat(
        made["created_at"]
    )
    assert abs(lifetime - timedelta(days=90)) < timedelta(seconds=1)


async def test_a_models_write_key_uploads_but_cannot_unpair_nor_act_elsewhere(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    device = await _device(client, acting(owner, team))
    made = await create_key(client, owner, ["models:write"], org_id=team)
    headers = key_headers(made["key"])
    uploaded = await client.post(
        f"{API}/models",
        data={"target_chip": "kl520"},
        files={"file": ("m.nef", nef(256), "application/octet-stream")},
        headers=headers,
    )
    assert uploaded.status_code == 201, uploaded.text
    listed = await client.get(f"{API}/devices", headers=headers)
    assert [d["id"] for d in listed.json()["items"]] == [device]  # the team's, not personal
    unpair = await client.delete(f"{API}/devices/{device}", headers=headers)
    assert unpair.status_code == 403
    assert error_code(unpair) == "forbidden"
    assert "devices:write" in unpair.json()["error"]["message"]
    elsewhere = await client.get(
        f"{API}/devices", headers={**headers, "X-Visiona-Org": owner.org_id}
    )
    assert elsewhere.status_code == 404
    same = await client.get(f"{API}/devices", headers={**headers, "X-Visiona-Org": team})
    assert same.status_code == 200
    me = await client.get(f"{API}/auth/me", headers=headers)
    assert me.status_code == 401  # a person's route
    assert "API key" in me.json()["error"]["message"]


async def test_keys_need_the_api_keys_permission_and_never_exceed_the_role(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    operator = await member(client, owner, team, "operator")
    admin = await member(client, owner, team, "admin")
    refused = await client.post(
        f"{API}/api-keys",
        json={"name": "x", "scopes": ["read"], "expires_in_days": 1},
        headers=acting(operator, team),
    )
    assert refused.status_code == 403
    assert "api_keys" in refused.json()["error"]["message"]
    made = await create_key(client, admin, ["admin"], org_id=team)
    # the admin-scoped key manages keys itself
    listed = await client.get(f"{API}/api-keys", headers=key_headers(made["key"]))
    assert listed.status_code == 200
    # its creator demoted: the key holds no more than the operator role
    await client.patch(
        f"{API}/orgs/{team}/members/{admin.id}", json={"role": "operator"}, headers=owner.headers
    )
    await asyncio.sleep(0)
    demoted = await client.get(f"{API}/api-keys", headers=key_headers(made["key"]))
    assert demoted.status_code == 403
    # a creator holding less than the scopes asked for
    async with runtime(app).db.transaction() as conn:
        with pytest.raises(ForbiddenError) as raised:
            await service.create_key(
                conn,
                org_id=uuid.UUID(team),
                created_by=uuid.UUID(operator.id),
                held=permissions_of(Role.OPERATOR),
                actor=Actor.user(uuid.UUID(operator.id)),
                name="x",
                scopes=["admin"],
                expires_in_days=1,
            )
    assert raised.value.code == "scope_not_allowed"
    assert Permission.MEMBERS.value in str(raised.value)


async def test_an_expired_or_revoked_key_is_401_and_revocation_is_immediate(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    made = await create_key(client, owner, ["read"])
    headers = key_headers(made["key"])
    assert (await client.get(f"{API}/devices", headers=headers)).status_code == 200
    revoked = await client.delete(f"{API}/api-keys/{made['id']}", headers=owner.headers)
    assert revoked.status_code == 204
    after = await client.get(f"{API}/devices", headers=headers)
    assert after.status_code == 401
    assert error_code(after) == "unauthorized"
    again = await client.delete(f"{API}/api-keys/{made['id']}", headers=owner.headers)
    assert again.status_code == 204
    stranger = await signup(client)
    other = await client.delete(f"{API}/api-keys/{made['id']}", headers=stranger.headers)
    assert other.status_code == 404

    expiring = await create_key(client, owner, ["read"])
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.id == uuid.UUID(expiring["id"]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    API_KEYS.of(app).forget(uuid.UUID(expiring["id"]))
    expired = await client.get(f"{API}/devices", headers=key_headers(expiring["key"]))
    assert expired.status_code == 401
    states = {k["id"]: k["state"] for k in (await client.get(
        f"{API}/api-keys", headers=owner.headers)).json()["items"]}  # fmt: skip
    assert states == {made["id"]: "revoked", expiring["id"]: "expired"}
    unknown = await client.get(f"{API}/devices", headers=key_headers("vak_" + "x" * 43))
    assert unknown.status_code == 401


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_revocation_on_one_node_takes_effect_on_another_within_a_second(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    owner = await signup(client)
    made = await create_key(client, owner, ["read"])
    headers = key_headers(made["key"])
    other_node = create_app(settings)
    async with (
        LifespanManager(
            other_node, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
        ),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=other_node), base_url="http://b"
        ) as node_b,
    ):
        assert (await node_b.get(f"{API}/devices", headers=headers)).status_code == 200
        revoked = await client.delete(f"{API}/api-keys/{made['id']}", headers=owner.headers)
        assert revoked.status_code == 204
        started = time.monotonic()
        while (await node_b.get(f"{API}/devices", headers=headers)).status_code != 401:
            assert time.monotonic() - started < 1.0, "node B still accepts the revoked key"
            await asyncio.sleep(0.02)


async def test_audit_events_made_with_a_key_name_the_key(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    made = await create_key(client, owner, ["devices:write"], name="pipeline")
    key_id = uuid.UUID(made["id"])
    device = await _device(client, key_headers(made["key"]))
    renamed = await client.patch(
        f"{API}/devices/{device}", json={"name": "by-ci"}, headers=key_headers(made["key"])
    )
    assert renamed.status_code == 200
    (event_,) = await stored_events(app, action="device.renamed")
    assert (event_.actor_type, event_.actor_id, event_.actor_name) == (
        "api_key",
        key_id,
        "pipeline",
    )
    token = await client.post(f"{API}/pairing-tokens", json={}, headers=key_headers(made["key"]))
    assert token.status_code == 201
    (issued,) = await stored_events(app, action="pairing_token.created")
    assert (issued.actor_type, issued.actor_id) == ("api_key", key_id)
    await client.delete(f"{API}/api-keys/{made['id']}", headers=owner.headers)
    created = await stored_events(app, action="api_key.created", target_id=made["id"])
    revoked = await stored_events(app, action="api_key.revoked", target_id=made["id"])
    assert created[0].detail["scopes"] == ["devices:write"]
    assert created[0].actor_type == revoked[0].actor_type == "user"
    assert revoked[0].detail == {"name": "pipeline"}
    trail = await client.get(f"{API}/audit-events", headers=owner.headers)
    assert any(e["actor_type"] == "api_key" and e["actor_name"] == "pipeline"
               for e in trail.json()["items"])  # fmt: skip


async def test_last_used_at_is_written_in_a_batch_not_per_request(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    made = await create_key(client, owner, ["read"])
    writes: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and "api_keys" in statement:
            writes.append(statement)

    engine = runtime(app).db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(5):
            response = await client.get(f"{API}/devices", headers=key_headers(made["key"]))
            assert response.status_code == 200
        assert writes == []
        assert await API_KEYS.of(app).flush() == 1
        assert len(writes) == 1
    finally:
        event.remove(engine, "before_cursor_execute", count)
    listed = (await client.get(f"{API}/api-keys", headers=owner.headers)).json()["items"]
    assert listed[0]["last_used_at"] is not None


async def test_the_background_task_writes_last_used_at(settings: Settings) -> None:
    fast = create_app(settings.model_copy(update={"api_key_usage_flush": 0.1}))
    async with (
        LifespanManager(fast, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=fast), base_url="http://a") as c,
    ):
        owner = await signup(c)
        made = await create_key(c, owner, ["read"])
        assert (await c.get(f"{API}/devices", headers=key_headers(made["key"]))).status_code == 200
        started = time.monotonic()
        while True:
            items = (await c.get(f"{API}/api-keys", headers=owner.headers)).json()["items"]
            if items[0]["last_used_at"] is not None:
                break
            assert time.monotonic() - started < 5.0, "last_used_at never written"
            await asyncio.sleep(0.05)


async def test_a_key_over_its_rate_gets_429_with_retry_after(settings: Settings) -> None:
    limited = create_app(settings.model_copy(update={"api_key_rate_limit": 3}))
    async with (
        LifespanManager(
            limited, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
        ),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=limited), base_url="http://a") as c,
    ):
        owner = await signup(c)
        made = await create_key(c, owner, ["read"])
        other = await create_key(c, owner, ["read"])
        codes = [
            (await c.get(f"{API}/devices", headers=key_headers(made["key"]))).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        last = await c.get(f"{API}/devices", headers=key_headers(made["key"]))
        assert error_code(last) == "rate_limited"
        assert int(last.headers["retry-after"]) >= 1
        # per key: another key and the user's session are not limited by it
        assert (await c.get(f"{API}/devices", headers=key_headers(other["key"]))).status_code == 200
        assert (await c.get(f"{API}/devices", headers=owner.headers)).status_code == 200


async def test_a_key_never_appears_in_the_logs(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    owner = await signup(client)
    caplog.set_level(logging.DEBUG)
    made = await create_key(client, owner, ["read"])
    key = made["key"]
    await client.get(f"{API}/devices", headers=key_headers(key))
    await client.get(f"{API}/devices/{uuid.uuid4()}", headers=key_headers(key))
    await client.delete(f"{API}/devices/{uuid.uuid4()}", headers=key_headers(key))
    await client.get(f"{API}/devices?limit=0", headers=key_headers(key))
    await client.delete(f"{API}/api-keys/{made['id']}", headers=owner.headers)
    await client.get(f"{API}/devices", headers=key_headers(key))
    assert any(r.name == "visiona.access" for r in caplog.records), "no access log to check"
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    assert key not in logged
    assert key[4:] not in logged


async def test_the_proxy_takes_a_proxy_key_and_the_agent_routes_take_none(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    device = await _device(client, owner.headers)
    proxy = await create_key(client, owner, ["proxy"])
    reader = await create_key(client, owner, ["read"])
    url = f"{API}/devices/{device}/proxy/status"
    reached = await client.get(url, headers=key_headers(proxy["key"]))
    assert reached.status_code not in (401, 403, 404)  # through to the (absent) tunnel
    assert error_code(reached) == "device_offline"
    refused = await client.get(url, headers=key_headers(reader["key"]))
    assert refused.status_code == 403
    assert "proxy" in refused.json()["error"]["message"]
    agent = await client.post(
        f"{API}/agent/status", json={"usb_status": "connected"}, headers=key_headers(proxy["key"])
    )
    assert agent.status_code == 401


async def test_a_key_is_looked_up_once_not_per_request(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    made = await create_key(client, owner, ["read"])
    reads: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "api_keys" in statement:
            reads.append(statement)

    engine = runtime(app).db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    started = time.monotonic()
    try:
        for _ in range(5):
            response = await client.get(f"{API}/devices", headers=key_headers(made["key"]))
            assert response.status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # once per lifetime of an entry (a loaded machine may outlast the 1 s one)
    assert len(reads) <= 1 + int((time.monotonic() - started) / API_KEYS.of(app).ttl)
    expected = TTL if runtime(app).redis is not None else LOCAL_TTL
    assert API_KEYS.of(app).ttl == expected
