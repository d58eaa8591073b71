"""Deployments in a cluster: the transfer runs on the node that holds the device's tunnel.

A deployment requested on a node without the tunnel is recorded there, then handed to
the owning node's internal route (``POST /internal/v1/deployments/{id}/transfer``, one
hop, the model file named in the body); that node streams the file through its tunnel
and records the outcome, which the requesting node reads back from the database.

While a transfer runs, its node holds a run lease in Redis (``dep:run:{id}``, renewed
every keepalive interval). Every node sweeps, once per lease TTL, the records still
``pending`` or ``transferring`` whose last change is older than the TTL and whose run
lease is gone: the node running them died, so they are ``failed``. A single node
fails at start-up whatever its previous run left unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from visiona.deployments import repository
from visiona.deployments import service as deployments
from visiona.deployments.schemas import DeploymentStatus
from visiona.kit.clock import utcnow
from visiona.tunnel.errors import DeviceOfflineError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from visiona.cluster.service import Cluster
    from visiona.deployments.repository import Deployment
    from visiona.kit.database import Database
    from visiona.kit.runtime import Runtime
    from visiona.models.storage import ObjectStorage
    from visiona.tunnel.link import TunnelLink

_LOGGER = logging.getLogger(__name__)
NODE_LOST = "the server node running the transfer stopped"
RESTARTED = "the server restarted during the transfer"
OWNER_UNREACHABLE = "the server node holding the device's tunnel is unreachable"
OWNER_LOST = "the server node holding the device's tunnel was lost during the transfer"
_BATCH = 500


def model_file_body(model: deployments.ModelFile) -> dict[str, object]:
    """The model file as the internal route's JSON body."""
    body = dataclasses.asdict(model)
    body["model_id"] = str(model.model_id)
    return body


def model_file_of(body: dict[str, object]) -> deployments.ModelFile:
    """The internal route's JSON body back as a model file (ValueError when malformed)."""
    try:
        return deployments.ModelFile(
            model_id=uuid.UUID(str(body["model_id"])),
            storage_key=str(body["storage_key"]),
            sha256=str(body["sha256"]),
            size=int(str(body["size"])),
            chip=str(body["chip"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError("malformed model file") from err


@contextlib.asynccontextmanager
async def _run_lease(cluster: Cluster | None, deployment_id: uuid.UUID) -> AsyncIterator[None]:
    """Hold the deployment's run lease while the block runs (cluster only)."""
    if cluster is None:
        yield
        return
    registry = cluster.registry

    async def renew() -> None:
        while True:
            await asyncio.sleep(registry.ttl / 3)
            try:
                await registry.renew_run(deployment_id)
            except Exception as err:  # noqa: BLE001 - Redis away: try again next time
                _LOGGER.warning(
                    "cluster: run lease of deployment %s not renewed: %s",
                    deployment_id,
                    type(err).__name__,
                )

    try:
        await registry.claim_run(deployment_id)
    except Exception as err:  # noqa: BLE001 - Redis away: the sweep may fail it; logged
        _LOGGER.warning(
            "cluster: run lease of deployment %s not taken: %s", deployment_id, type(err).__name__
        )
    renewing = asyncio.get_running_loop().create_task(renew())
    try:
        yield
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        try:
            await registry.release_run(deployment_id)
        except Exception as err:  # noqa: BLE001 - it expires by itself
            _LOGGER.warning(
                "cluster: run lease of deployment %s not released: %s",
                deployment_id,
                type(err).__name__,
            )


async def run_here(
    runtime: Runtime,
    storage: ObjectStorage,
    link: TunnelLink,
    deployment: Deployment,
    model: deployments.ModelFile,
) -> Deployment:
    """Transfer through this node's ``link`` (under a run lease in a cluster)."""
    async with _run_lease(runtime.cluster, deployment.id):
        return await deployments.transfer(
            runtime.db,
            storage,
            link,
            deployment,
            model,
            answer_timeout=runtime.settings.deploy_answer_timeout,
            transfer_timeout=runtime.settings.deploy_transfer_timeout,
        )


async def deliver(
    runtime: Runtime,
    storage: ObjectStorage,
    link: TunnelLink | None,
    deployment: Deployment,
    model: deployments.ModelFile,
) -> Deployment:
    """Run the deployment here, or on the node holding the tunnel; return the final record.

    No node holds a tunnel of the device (or its owning node cannot be reached) →
    the record is ``failed`` and :class:`~visiona.deployments.service.DeploymentOfflineError`
    is raised with it.
    """
    if link is not None and link.owner_user_id == deployment.owner_user_id:
        return await run_here(runtime, storage, link, deployment, model)
    cluster = runtime.cluster
    owner = None
    if link is None and cluster is not None:
        try:
            owner = await cluster.registry.owner(deployment.device_id)
        except Exception as err:  # noqa: BLE001 - Redis away: answer from this node alone
            _LOGGER.warning("cluster: registry lookup failed: %s", type(err).__name__)
        if owner is not None and owner.node_id == cluster.registry.node_id:
            owner = None
    if cluster is None or owner is None:
        failed = await deployments.mark(
            runtime.db, deployment.id, DeploymentStatus.FAILED, deployments.OFFLINE_REASON
        )
        raise deployments.DeploymentOfflineError(failed, DeviceOfflineError.default_message)
    outcome = await cluster.forwarder.deploy(
        owner,
        deployment_id=deployment.id,
        user_id=deployment.owner_user_id,
        model=model_file_body(model),
    )
    if outcome.unreachable:
        failed = await deployments.mark(
            runtime.db, deployment.id, DeploymentStatus.FAILED, OWNER_UNREACHABLE
        )
        raise deployments.DeploymentOfflineError(failed, OWNER_UNREACHABLE)
    if outcome.lost:
        return await deployments.mark(
            runtime.db, deployment.id, DeploymentStatus.FAILED, OWNER_LOST
        )
    # The owning node recorded the final state, which ``mark`` leaves as it is and
    # returns; an answer that recorded none (the node refused the call) fails it here.
    reason = f"the server node holding the device's tunnel answered {outcome.status}"
    record = await deployments.mark(runtime.db, deployment.id, DeploymentStatus.FAILED, reason)
    if outcome.code == "device_offline":
        raise deployments.DeploymentOfflineError(record, DeviceOfflineError.default_message)
    return record


async def sweep(db: Database, cluster: Cluster) -> int:
    """Fail the unfinished deployments no live node is running; how many were failed."""
    cutoff = utcnow() - timedelta(seconds=cluster.registry.ttl)
    # unit of work: the sweep's own read; each fail below is its own short write
    async with db.transaction() as conn:
        candidates = await repository.unfinished_before(conn, cutoff)
    if not candidates:
        return 0
    alive = await cluster.registry.running(candidates)
    failed = 0
    for deployment_id in candidates:
        if deployment_id in alive:
            continue
        record = await deployments.mark(db, deployment_id, DeploymentStatus.FAILED, NODE_LOST)
        if record.error == NODE_LOST:
            failed += 1
            _LOGGER.warning("deployment %s failed: %s", deployment_id, NODE_LOST)
    return failed


async def sweep_loop(db: Database, cluster: Cluster) -> None:
    """:func:`sweep` once per lease TTL until cancelled (a failure waits for the next turn)."""
    while True:
        try:
            await sweep(db, cluster)
        except Exception as err:  # noqa: BLE001 - database or Redis away: next turn
            _LOGGER.warning("cluster: deployment sweep failed: %s", type(err).__name__)
        await asyncio.sleep(cluster.registry.ttl)


async def fail_left_unfinished(db: Database) -> int:
    """Single node at start-up: every unfinished deployment was its previous run's."""
    failed = 0
    while True:
        # unit of work: start-up reset, one batch per transaction
        async with db.transaction() as conn:
            batch = await repository.unfinished_before(conn, utcnow(), _BATCH)
            for deployment_id in batch:
                record = await repository.set_status(
                    conn,
                    deployment_id,
                    status=DeploymentStatus.FAILED,
                    now=utcnow(),
                    error=RESTARTED,
                )
                if record is not None:  # its audit event, in the same transaction
                    await deployments.record_outcome(conn, record, DeploymentStatus.FAILED)
        failed += len(batch)
        if len(batch) < _BATCH:
            break
    if failed:
        _LOGGER.info("deployments: failed %s left unfinished by a previous run", failed)
    return failed
