"""record(): an event is written in the caller's transaction, with the request's context,
and never carries a secret. On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.support.api import signup
from tests.support.audit import stored_events
from tests.support.devices import API, paired_device, runtime
from visiona.audit import service as audit
from visiona.audit.repository import AuditEvent, EventFilter
from visiona.audit.service import SYSTEM, Actor
from visiona.devices import service as devices
from visiona.kit.pagination import PageRequest
from visiona.kit.schema import pairing_tokens
from visiona.tokens import service as tokens


class _InjectedError(Exception):
    """Raised inside a unit of work after the change, to make it roll back."""


async def test_an_event_commits_with_its_change(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await signup(client)
    owner, org = uuid.UUID(user.id), uuid.UUID(user.org_id)
    async with runtime(app).db.transaction() as conn:
        issued = await tokens.create_pairing_token(conn, org, owner, 60)
    (event,) = await stored_events(app, owner_id=owner, target_type="pairing_token")
    assert event.action == "pairing_token.created"
    assert event.target_type == "pairing_token"
    assert event.target_id == issued.id
    assert event.actor_type == "user"
    assert event.actor_id == owner


async def test_a_failure_after_the_change_leaves_neither_change_nor_event(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await signup(client)
    owner, org = uuid.UUID(user.id), uuid.UUID(user.org_id)
    seen: list[str] = []

    async def create_then_fail() -> None:
        async with runtime(app).db.transaction() as conn:
            await tokens.create_pairing_token(conn, org, owner, 60)
            seen.extend(
                e.action for e in await _events_on(conn, org) if e.target_type == "pairing_token"
            )
            raise _InjectedError

    with pytest.raises(_InjectedError):
        await create_then_fail()
    assert seen == ["pairing_token.created"]  # both existed inside the transaction
    assert await stored_events(app, owner_id=owner, action="pairing_token.created") == []
    async with runtime(app).db.reading() as conn:
        count = await conn.execute(
            select(func.count())
            .select_from(pairing_tokens)
            .where(pairing_tokens.c.user_id == owner)
        )
        assert count.scalar_one() == 0


async def _events_on(conn: AsyncConnection, org: uuid.UUID) -> list[AuditEvent]:
    """The organisation's events as ``conn`` (inside its transaction) sees them."""
    page = await audit.list_events(conn, EventFilter(org_id=org), PageRequest())
    return page.items


async def test_the_request_id_and_client_address_come_from_the_request(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await signup(client)
    response = await client.post(
        f"{API}/pairing-tokens", headers={**user.headers, "X-Request-ID": "trace-42"}
    )
    assert response.status_code == 201
    (event,) = await stored_events(app, owner_id=uuid.UUID(user.id), action="pairing_token.created")
    assert event.request_id == "trace-42"
    assert event.client_addr == "127.0.0.1"  # httpx's ASGI transport's client


async def test_outside_a_request_the_context_is_empty_and_the_system_can_act(
    app: FastAPI,
) -> None:
    owner = uuid.uuid4()
    async with runtime(app).db.transaction() as conn:
        await audit.record(
            conn,
            "tunnel.closed_revoked",
            actor=SYSTEM,
            owner_id=owner,
            org_id=None,
            target_id=owner,
            detail={"count": 1, "ids": [uuid.UUID(int=1)]},
        )
    (event,) = await stored_events(app, owner_id=owner)
    assert (event.actor_type, event.actor_id) == ("system", None)
    assert event.request_id is None
    assert event.client_addr is None
    assert event.detail == {"count": 1, "ids": [str(uuid.UUID(int=1))]}


@pytest.mark.parametrize(
    "detail",
    [
        {"token": "x"},
        {"token_hash": "ab" * 32},
        {"password": "hunter2"},
        {"note": "vpt_" + "A" * 43},
        {"tokens": ["vst_" + "B" * 43]},
        {"big": ["x" * 300] * 10},
    ],
)
async def test_a_detail_that_carries_a_secret_or_is_too_big_is_refused(
    app: FastAPI, detail: dict[str, object]
) -> None:
    owner = uuid.uuid4()
    with pytest.raises(ValueError, match="audit detail"):
        async with runtime(app).db.transaction() as conn:
            await audit.record(
                conn,
                "device.renamed",
                actor=Actor.user(owner),
                owner_id=owner,
                org_id=None,
                target_id=owner,
                detail=detail,
            )
    assert await stored_events(app, owner_id=owner) == []


async def test_an_unknown_action_is_refused(app: FastAPI) -> None:
    with pytest.raises(ValueError, match="unknown audit action"):
        async with runtime(app).db.transaction() as conn:
            await audit.record(conn, "device.teleported", actor=SYSTEM, org_id=None, target_id=None)


async def test_an_unpair_that_fails_after_its_change_leaves_the_device_tokens_and_trail(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await signup(client)
    org = uuid.UUID(user.org_id)
    device = await paired_device(client, user)
    device_id = uuid.UUID(device["device_id"])

    async def unpair_then_fail() -> None:
        async with runtime(app).db.transaction() as conn:
            await devices.unpair_device(conn, org, device_id, actor=Actor.user(uuid.UUID(user.id)))
            raise _InjectedError

    with pytest.raises(_InjectedError):
        await unpair_then_fail()
    assert await stored_events(app, action="device.unpaired", device_id=device_id) == []
    fetched = await client.get(f"{API}/devices/{device_id}", headers=user.headers)
    assert fetched.status_code == 200  # still live
    async with runtime(app).db.reading() as conn:
        identity = await tokens.authenticate_device(conn, device["session_token"])
    assert identity.device_id == device_id  # its session token still holds
