"""A device whose transfer was lost is sent its model again only on fresh knowledge of
what its agent runs (the scheduler's candidates, read from the database)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select, update

from tests.support.api import signup
from tests.support.audit import actions
from tests.support.devices import API, create_device, runtime
from tests.support.models import nef, uploaded
from visiona.deployments import service as deployments_service
from visiona.deployments.recovery import NODE_LOST
from visiona.deployments.schemas import DeploymentOut, DeploymentStatus
from visiona.deployments.service import OFFLINE_REASON
from visiona.kit.clock import utcnow
from visiona.kit.database import Database
from visiona.kit.schema import deployments, devices, rollout_devices
from visiona.rollouts import repository
from visiona.rollouts.scheduler import LOST, NOTHING_SENT

#: above any fencing token the app's own scheduler draws: it leaves the rollout alone
TOKEN = 2**62


class Lost:
    """A rollout of one device whose first transfer was recorded at ``dispatched``, then lost."""

    def __init__(self, db: Database, rollout_id: uuid.UUID, device_id: uuid.UUID) -> None:
        self.db, self.rollout_id, self.device_id = db, rollout_id, device_id
        self.dispatched = utcnow() - timedelta(minutes=10)

    async def lose(self, error: str, *, queued_at: datetime) -> None:
        """The transfer's deployment failed with ``error``; the device is queued again."""
        async with self.db.transaction() as conn:
            row = (
                await conn.execute(
                    rollout_devices.select().where(rollout_devices.c.rollout_id == self.rollout_id)
                )
            ).one()
            deployment_id = uuid.uuid4()
            rollout = await repository.fence(conn, self.rollout_id, TOKEN)
            assert rollout is not None
            await conn.execute(
                insert(deployments).values(
                    id=deployment_id,
                    owner_user_id=rollout.owner_user_id,
                    org_id=rollout.org_id,
                    device_id=self.device_id,
                    model_id=row.model_id,
                    status="failed",
                    error=error,
                    created_at=self.dispatched,
                    updated_at=self.dispatched,
                    finished_at=self.dispatched,
                )
            )
            await conn.execute(
                update(rollout_devices)
                .where(rollout_devices.c.rollout_id == self.rollout_id)
                .values(
                    state="queued",
                    batch=0,
                    attempts=1,
                    deployment_id=deployment_id,
                    error=error,
                    updated_at=queued_at,
                )
            )

    async def device(self, **values: Any) -> None:
        """Set the device's tunnel and report columns."""
        async with self.db.transaction() as conn:
            await conn.execute(
                update(devices).where(devices.c.id == self.device_id).values(**values)
            )

    async def candidate(self) -> bool:
        """Whether the scheduler would send the device its model now."""
        now = utcnow()
        async with self.db.transaction() as conn:
            found = await repository.candidates(
                conn,
                self.rollout_id,
                10,
                settled_before=now - timedelta(seconds=5),
                outlived_before=now - timedelta(seconds=1800),
                silent_before=now - timedelta(seconds=60),
                nothing_sent=NOTHING_SENT,
            )
        return [c.device_id for c in found] == [self.device_id]


@pytest.fixture
async def lost(client: httpx.AsyncClient, app: FastAPI) -> Lost:
    """A one-device rollout, fenced by this test."""
    user = await signup(client)
    device = await create_device(client, user)
    model = await uploaded(client, user, nef(1024), chip="kl720")
    created = await client.post(
        f"{API}/rollouts",
        json={"model_id": model["id"], "device_ids": [device["id"]]},
        headers=user.headers,
    )
    assert created.status_code == 201, created.text
    return Lost(runtime(app).db, uuid.UUID(created.json()["id"]), uuid.UUID(str(device["id"])))


async def test_a_lost_transfer_is_not_sent_again_before_the_agent_reconnects_and_reports(
    lost: Lost,
) -> None:
    now = utcnow()
    await lost.lose(NODE_LOST, queued_at=now - timedelta(seconds=30))
    before = lost.dispatched - timedelta(minutes=1)
    # Still the tunnel of the lost transfer (the database has not heard of a new one).
    await lost.device(remote_status="online", last_connected_at=before, updated_at=now)
    assert not await lost.candidate()
    # A new tunnel, but the agent has not reported on it yet.
    await lost.device(last_connected_at=now, updated_at=now - timedelta(seconds=1))
    assert not await lost.candidate()
    # Its report on the new tunnel landed: what it runs is known.
    await lost.device(updated_at=now + timedelta(milliseconds=5))
    assert await lost.candidate()


async def test_a_reconnected_agent_that_never_reports_is_sent_the_model_after_a_minute(
    lost: Lost,
) -> None:
    now = utcnow()
    await lost.device(
        remote_status="online", last_connected_at=now, updated_at=now - timedelta(seconds=1)
    )
    await lost.lose(NODE_LOST, queued_at=now - timedelta(seconds=30))
    assert not await lost.candidate()
    await lost.lose(NODE_LOST, queued_at=now - timedelta(seconds=61))
    assert await lost.candidate()  # not forgotten: the agent's own rule loads it once


async def test_a_transfer_that_sent_nothing_is_tried_again_after_a_pause(lost: Lost) -> None:
    now = utcnow()
    before = lost.dispatched - timedelta(minutes=1)
    await lost.device(remote_status="online", last_connected_at=before, updated_at=before)
    await lost.lose(OFFLINE_REASON, queued_at=now)
    assert not await lost.candidate()
    await lost.lose(OFFLINE_REASON, queued_at=now - timedelta(seconds=6))
    assert await lost.candidate()


async def test_a_transfer_lost_on_a_tunnel_that_stayed_up_waits_out_the_transfer_timeout(
    lost: Lost,
) -> None:
    now = utcnow()
    before = lost.dispatched - timedelta(minutes=1)
    await lost.device(remote_status="online", last_connected_at=before, updated_at=now)
    await lost.lose(NODE_LOST, queued_at=now - timedelta(minutes=5))
    assert not await lost.candidate()
    await lost.lose(NODE_LOST, queued_at=now - timedelta(seconds=1801))
    assert await lost.candidate()


async def test_a_lost_transfer_the_agent_reports_running_succeeds_and_so_does_its_record(
    lost: Lost, app: FastAPI
) -> None:
    now = utcnow()
    await lost.lose(NODE_LOST, queued_at=now)
    async with lost.db.transaction() as conn:
        row = (
            await conn.execute(
                rollout_devices.select().where(rollout_devices.c.rollout_id == lost.rollout_id)
            )
        ).one()
    # The agent's report after it reconnected: it runs the rollout's model.
    await lost.device(current_model_id=row.model_id, current_model_sha256=row.model_sha256)
    async with lost.db.transaction() as conn:
        arrived = await repository.sync_devices(conn, lost.rollout_id, utcnow())
        assert arrived == [row.deployment_id]
        record = await deployments_service.confirm_delivered(conn, row.deployment_id, LOST)
        assert record is not None
        again = await deployments_service.confirm_delivered(conn, row.deployment_id, LOST)
        assert again is None  # once only
        state = (
            await conn.execute(
                select(rollout_devices.c.state).where(
                    rollout_devices.c.rollout_id == lost.rollout_id
                )
            )
        ).scalar_one()
    assert state == "succeeded"
    assert record.status is DeploymentStatus.SUCCEEDED
    out = DeploymentOut.model_validate(record)
    assert out.error is None
    assert out.detail == deployments_service.CONFIRMED_NOTICE.format(reason=NODE_LOST)
    succeeded = await actions(app, action="deployment.succeeded", target_id=str(row.deployment_id))
    assert succeeded == ["deployment.succeeded"]
