"""One deployment per device at a time, on both databases, and stuck records failed.

The rule lives in the database (a partial unique index over the active rows, and
``INSERT … ON CONFLICT DO NOTHING``), so it holds for concurrent requests on one
node or several; these tests race real transactions and real HTTP requests.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import insert, select

from testkit.live import LiveServer
from tests.support.api import signup
from tests.support.audit import stored_events
from tests.support.deployments import (
    Received,
    answer,
    deploy,
    deployments_of,
    device_and_model,
    read_request,
)
from tests.support.devices import runtime
from tests.support.tunnel import connect_agent, wait_for
from visiona.deployments import repository, service
from visiona.kit.clock import utcnow
from visiona.kit.schema import deployments
from visiona.tunnel.dependencies import HUB
from visiona.yamux import Stream


async def test_two_concurrent_prepares_record_one_and_refuse_the_other(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    device_id, _token, model_id, _ = await device_and_model(client, user)
    db = runtime(app).db

    async def attempt() -> uuid.UUID | str:
        try:
            async with db.transaction() as conn:
                record, _ = await service.prepare(
                    conn,
                    uuid.UUID(user.org_id),
                    uuid.UUID(user.id),
                    uuid.UUID(device_id),
                    uuid.UUID(model_id),
                    transfer_timeout=600,
                )
                await asyncio.sleep(0.05)  # keep the transaction open while the other tries
                return record.id
        except service.DeploymentInProgressError as err:
            return str(err.running)

    first, second = await asyncio.gather(attempt(), attempt())
    winner = first if isinstance(first, uuid.UUID) else second
    loser = second if winner is first else first
    assert isinstance(winner, uuid.UUID)
    assert loser == str(winner)  # the refused one names the running deployment
    async with db.transaction() as conn:
        rows = (await conn.execute(select(deployments.c.id, deployments.c.status))).all()
    assert rows == [(winner, "pending")]


async def test_a_record_older_than_the_transfer_timeout_is_failed_not_kept(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    device_id, _token, model_id, _ = await device_and_model(client, user)
    db = runtime(app).db
    stuck = uuid.uuid4()
    long_ago = utcnow() - timedelta(seconds=runtime(app).settings.deploy_transfer_timeout + 5)
    async with db.transaction() as conn:  # what a server that crashed mid-transfer leaves
        await conn.execute(
            insert(deployments).values(
                id=stuck,
                owner_user_id=uuid.UUID(user.id),
                org_id=uuid.UUID(user.org_id),
                device_id=uuid.UUID(device_id),
                model_id=uuid.UUID(model_id),
                status="transferring",
                created_at=long_ago,
                updated_at=long_ago,
            )
        )
    response = await deploy(client, user, device_id, model_id)
    assert response.status_code == 502  # not 409: the stuck one no longer counts
    assert response.json()["error"]["code"] == "device_offline"
    records = {r["id"]: r for r in await deployments_of(client, user, device_id)}
    assert records[str(stuck)]["status"] == "failed"
    assert records[str(stuck)]["error"] == service.STALE_REASON
    assert records[str(stuck)]["finished_at"] is not None
    assert len(records) == 2
    [event] = await stored_events(app, action="deployment.failed", target_id=str(stuck))
    assert (event.actor_type, str(event.owner_id)) == ("system", user.id)
    assert event.detail == {"model_id": model_id, "reason": service.STALE_REASON}


async def test_a_recent_active_record_is_kept_and_refuses_the_next(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    device_id, _token, model_id, _ = await device_and_model(client, user)
    running = uuid.uuid4()
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            insert(deployments).values(
                id=running,
                owner_user_id=uuid.UUID(user.id),
                org_id=uuid.UUID(user.org_id),
                device_id=uuid.UUID(device_id),
                model_id=uuid.UUID(model_id),
                status="pending",
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    response = await deploy(client, user, device_id, model_id)
    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["code"], error["deployment_id"]) == ("deployment_in_progress", str(running))
    assert [r["id"] for r in await deployments_of(client, user, device_id)] == [str(running)]


async def test_two_concurrent_http_deployments_one_runs_one_gets_409(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    device_id, token, model_id, _ = await device_and_model(http, user)
    go = asyncio.Event()

    async def agent(stream: Stream) -> None:
        await read_request(stream, Received())
        await go.wait()
        answer(stream, 200, json.dumps({"model_id": model_id}).encode())

    async with connect_agent(live, token, agent):

        async def connected() -> bool:
            return HUB.of(live.app).get(uuid.UUID(device_id)) is not None

        await wait_for(connected)
        tasks = [asyncio.create_task(deploy(http, user, device_id, model_id)) for _ in range(2)]

        async def one_refused() -> bool:
            return any(t.done() for t in tasks)

        await wait_for(one_refused, limit=30)
        go.set()
        responses = await asyncio.gather(*tasks)
    codes = sorted(r.status_code for r in responses)
    assert codes == [201, 409], [r.text for r in responses]
    ok = next(r for r in responses if r.status_code == 201).json()
    refused = next(r for r in responses if r.status_code == 409).json()["error"]
    assert refused["deployment_id"] == ok["id"]
    assert [r["id"] for r in await deployments_of(http, user, device_id)] == [ok["id"]]


async def test_openapi_declares_the_409(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    post = spec["paths"]["/api/v1/devices/{device_id}/deployments"]["post"]
    assert "deployment_in_progress" in post["responses"]["409"]["description"]
    proxy = spec["paths"]["/api/v1/devices/{device_id}/proxy/{path}"]["get"]
    assert "device_busy" in proxy["responses"]["429"]["description"]
    assert "forbidden_by_agent" in proxy["responses"]["403"]["description"]


async def test_the_admission_insert_holds_past_the_generic_plan_of_a_prepared_statement(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """PostgreSQL plans a prepared statement generically after five executions on one
    connection: the ON CONFLICT arbiter must still be inferred (the index predicate is
    written with literals, not parameters)."""
    user = await signup(client)
    org, owner = uuid.UUID(user.org_id), uuid.UUID(user.id)
    device_id, _token, model_id, _ = await device_and_model(client, user)
    async with runtime(app).db.transaction() as conn:
        first = await repository.insert_deployment(
            conn,
            deployment_id=uuid.uuid4(),
            owner_user_id=owner,
            org_id=org,
            device_id=uuid.UUID(device_id),
            model_id=uuid.UUID(model_id),
            now=utcnow(),
        )
        assert first is not None
        for _ in range(12):  # each refused by the one active row, none an error
            again = await repository.insert_deployment(
                conn,
                deployment_id=uuid.uuid4(),
                owner_user_id=owner,
                org_id=org,
                device_id=uuid.UUID(device_id),
                model_id=uuid.UUID(model_id),
                now=utcnow(),
            )
            assert again is None
