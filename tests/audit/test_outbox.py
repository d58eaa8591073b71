"""The webhook outbox: an event is queued for each subscribed, enabled endpoint of its
organisation in the transaction of the change, and for nothing else. On SQLite and
PostgreSQL, schema built by the migrations."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select

from tests.support.api import signup
from tests.support.devices import runtime
from visiona.audit import service as audit
from visiona.audit.outbox import family
from visiona.audit.service import SYSTEM, Actor
from visiona.kit.schema import webhook_deliveries, webhook_endpoints, webhook_subscriptions


class _InjectedError(Exception):
    """Raised inside a unit of work after the change, to make it roll back."""


async def _endpoint(
    app: FastAPI, org: uuid.UUID, events: list[str], *, enabled: bool = True
) -> uuid.UUID:
    endpoint_id = uuid.uuid4()
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            insert(webhook_endpoints).values(
                id=endpoint_id,
                org_id=org,
                url="https://example.test/hook",
                secret="whsec_dGVzdHRlc3R0ZXN0dGVzdA==",
                events=" ".join(sorted(events)),
                enabled=enabled,
            )
        )
        await conn.execute(
            insert(webhook_subscriptions),
            [{"endpoint_id": endpoint_id, "event_type": e} for e in events],
        )
    return endpoint_id


async def _deliveries(app: FastAPI) -> list[Any]:
    async with runtime(app).db.transaction() as conn:
        result = await conn.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.seq))
        return list(result.mappings())


async def _rename(app: FastAPI, org: uuid.UUID, user: uuid.UUID) -> uuid.UUID:
    async with runtime(app).db.transaction() as conn:
        return await audit.record(
            conn,
            "model.renamed",
            actor=Actor.user(user),
            org_id=org,
            target_id=uuid.uuid4(),
            detail={"from": "a", "to": "b"},
        )


def test_the_family_of_an_action_is_its_first_word() -> None:
    assert family("device.renamed") == "device.*"
    assert family("rollout.batch_finished") == "rollout.*"


async def test_an_event_is_queued_for_each_matching_endpoint(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await signup(client)
    owner, org = uuid.UUID(user.id), uuid.UUID(user.org_id)
    exact = await _endpoint(app, org, ["model.renamed"])
    by_family = await _endpoint(app, org, ["model.*"])
    everything = await _endpoint(app, org, ["*"])
    await _endpoint(app, org, ["device.renamed"])  # another action
    await _endpoint(app, org, ["model.renamed"], enabled=False)
    other = await signup(client)
    await _endpoint(app, uuid.UUID(other.org_id), ["*"])  # another organisation

    event_id = await _rename(app, org, owner)

    rows = await _deliveries(app)
    assert {r["endpoint_id"] for r in rows} == {exact, by_family, everything}
    for row in rows:
        assert row["event_id"] == event_id
        assert row["event_type"] == "model.renamed"
        assert row["state"] == "pending"
        assert row["attempts"] == 0
        body = row["payload"]
        assert body["type"] == "model.renamed"
        assert body["data"]["id"] == str(event_id)
        assert body["data"]["org_id"] == str(org)
        assert body["data"]["detail"] == {"from": "a", "to": "b"}
        assert body["data"]["actor"] == {"type": "user", "id": str(owner)}


async def test_a_rolled_back_change_queues_nothing(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await signup(client)
    org = uuid.UUID(user.org_id)
    await _endpoint(app, org, ["*"])

    async def record_then_fail() -> None:
        async with runtime(app).db.transaction() as conn:
            await audit.record(
                conn, "model.deleted", actor=SYSTEM, org_id=org, target_id=uuid.uuid4()
            )
            raise _InjectedError

    with pytest.raises(_InjectedError):
        await record_then_fail()
    assert await _deliveries(app) == []


async def test_a_batch_of_events_is_queued_in_order(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await signup(client)
    org = uuid.UUID(user.org_id)
    endpoint = await _endpoint(app, org, ["model.*"])
    rows = [
        audit.event_values("model.deleted", actor=SYSTEM, org_id=org, target_id=uuid.uuid4())
        for _ in range(3)
    ]
    rows.append(audit.event_values("model.deleted", actor=SYSTEM, org_id=None, target_id=None))
    async with runtime(app).db.transaction() as conn:
        await audit.record_prepared(conn, rows)
    queued = await _deliveries(app)
    assert [r["event_id"] for r in queued] == [r["id"] for r in rows[:3]]
    assert {r["endpoint_id"] for r in queued} == {endpoint}
