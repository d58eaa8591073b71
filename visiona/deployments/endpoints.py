"""HTTP routes for deployments (HTTP in/out only).

``POST /devices/{id}/deployments`` does not use the per-request unit of work: it
opens short transactions itself (check and record, then each status change), so
no database connection is held while the file crosses the tunnel.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from visiona.auth.dependencies import CurrentPrincipal
from visiona.cluster.deployments import deliver
from visiona.deployments import service
from visiona.deployments.schemas import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentPage,
)
from visiona.kit.deps import Conn, RuntimeDep
from visiona.kit.errors import (
    CsrfError,
    NotFoundError,
    StorageUnavailableError,
    UnauthorizedError,
    ValidationFailedError,
)
from visiona.kit.http import error_responses
from visiona.kit.pagination import PageParams
from visiona.tunnel.endpoints import hub_of

router = APIRouter(prefix="/devices", tags=["deployments"])


@router.post(
    "/{device_id}/deployments",
    status_code=status.HTTP_201_CREATED,
    response_model=DeploymentOut,
    summary="Deploy a model to a device",
    responses=error_responses(
        UnauthorizedError,
        CsrfError,
        NotFoundError,
        service.ChipMismatchError,
        service.ModelFileMissingError,
        service.DeploymentInProgressError,
        ValidationFailedError,
        service.DeploymentOfflineError,
        service.DeploymentFailedError,
        StorageUnavailableError,
    ),
)
async def create_deployment(
    device_id: uuid.UUID, body: DeploymentCreate, principal: CurrentPrincipal, runtime: RuntimeDep
) -> DeploymentOut:
    """Send the model's file through the device's tunnel to its agent and wait for the outcome.

    Answers 201 with the ``succeeded`` record (the agent's deploy hook ran), or the
    ``stored`` one when the agent has no deploy hook (``detail`` says where the file is
    on the PC). A failed transfer (tunnel dropped,
    checksum refused, hook failed, no answer, ...) → 502 ``deployment_failed``, and a
    device that is not connected → 502 ``device_offline``: both keep the record as
    ``failed`` and return it under ``error.deployment`` (its ``id`` and ``error``).
    Another user's device or model → 404; a model without a file → 409
    ``model_file_missing``; a model for another chip than the device type → 409
    ``chip_mismatch`` (nothing recorded). Deployments to one device are serialised:
    while one is ``pending`` or ``transferring`` another → 409 ``deployment_in_progress``
    with the running one's id in ``error.deployment_id`` (nothing recorded); one a
    stopped server left active is failed at start-up or by the cluster's sweep, and at
    the latest here once ``VISIONA_DEPLOY_TRANSFER_TIMEOUT`` has passed since it was
    requested.
    """
    storage = runtime.model_storage
    if storage is None:
        raise StorageUnavailableError()
    # unit of work: deployment transfer: check and record here, each state change on its own
    async with runtime.db.transaction() as conn:
        deployment, model = await service.prepare(
            conn,
            principal.user_id,
            device_id,
            body.model_id,
            transfer_timeout=runtime.settings.deploy_transfer_timeout,
        )
    # This node's tunnel, else the node holding it (one hop), else 502 device_offline.
    link = hub_of(runtime).get(device_id)
    record = await deliver(runtime, storage, link, deployment, model)
    if not record.status.delivered:
        raise service.DeploymentFailedError(record)
    return DeploymentOut.model_validate(record)


@router.get(
    "/{device_id}/deployments",
    response_model=DeploymentPage,
    summary="Deployments of a device",
    responses=error_responses(UnauthorizedError, NotFoundError, ValidationFailedError),
)
async def list_deployments(
    device_id: uuid.UUID,
    principal: CurrentPrincipal,
    conn: Conn,
    page: PageParams,
) -> DeploymentPage:
    """The device's deployments, newest first, one page at a time (404 when not yours)."""
    found = await service.list_deployments(conn, principal.user_id, device_id, page)
    return DeploymentPage(
        items=[DeploymentOut.model_validate(r) for r in found.items], next_cursor=found.next_cursor
    )
