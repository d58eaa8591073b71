"""HTTP routes for deployments (HTTP in/out only).

``POST /devices/{id}/deployments`` does not use the per-request unit of work: it
opens short transactions itself (check and record, then each status change), so
no database connection is held while the file crosses the tunnel. Where the transfer
runs is :class:`~visiona.deployments.delivery.Delivery`'s business: this node's tunnel,
or the node holding it, which runs it there: handed over the node link by nodes of
this version, or through the internal route (:data:`internal_router`,
``POST /internal/v1/deployments/{id}/transfer``) by older nodes (a rolling upgrade).
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status

from visiona.auth.dependencies import CurrentPrincipal, Deployer
from visiona.cluster.dependencies import INTERNAL_PREFIX, InternalCaller
from visiona.deployments import service
from visiona.deployments.dependencies import DeliveryDep
from visiona.deployments.schemas import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentPage,
)
from visiona.kit.deps import Conn, DatabaseDep, SettingsDep
from visiona.kit.errors import (
    BadRequestError,
    CsrfError,
    NotFoundError,
    UnauthorizedError,
    ValidationFailedError,
)
from visiona.kit.http import error_responses
from visiona.kit.pagination import PageParams

router = APIRouter(prefix="/devices", tags=["deployments"])
#: The route other nodes hand transfers to (``/internal/v1/…``; never exposed publicly).
internal_router = APIRouter(prefix=INTERNAL_PREFIX, include_in_schema=False)


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
    ),
)
async def create_deployment(
    device_id: uuid.UUID,
    body: DeploymentCreate,
    principal: Deployer,
    *,
    db: DatabaseDep,
    settings: SettingsDep,
    delivery: DeliveryDep,
) -> DeploymentOut:
    """Send the model's file through the device's tunnel to its agent and wait for the outcome.

    Answers 201 with the ``succeeded`` record (the agent's deploy hook ran), or the
    ``stored`` one when the agent has no deploy hook (``detail`` says where the file is
    on the PC). A failed transfer (tunnel dropped,
    checksum refused, hook failed, no answer, ...) → 502 ``deployment_failed``, and a
    device that is not connected → 502 ``device_offline``: both keep the record as
    ``failed`` and return it under ``error.deployment`` (its ``id`` and ``error``).
    Another organisation's device or model → 404; a model without a file → 409
    ``model_file_missing``; a model for another chip than the device type → 409
    ``chip_mismatch`` (nothing recorded). Deployments to one device are serialised:
    while one is ``pending`` or ``transferring`` another → 409 ``deployment_in_progress``
    with the running one's id in ``error.deployment_id`` (nothing recorded); one a
    stopped server left active is failed at start-up or by the cluster's sweep, and at
    the latest here once ``VISIONA_DEPLOY_TRANSFER_TIMEOUT`` has passed since it was
    requested.
    """
    # unit of work: deployment transfer: check and record here, each state change on its own
    async with db.transaction() as conn:
        deployment, model = await service.prepare(
            conn,
            principal.org_id,
            principal.user_id,
            device_id,
            body.model_id,
            transfer_timeout=settings.deploy_transfer_timeout,
            actor=principal.audit_actor,
        )
    # This node's tunnel, else the node holding it (one hop), else 502 device_offline.
    record = await delivery.deliver(deployment, model)
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
    found = await service.list_deployments(conn, principal.org_id, device_id, page)
    return DeploymentPage(
        items=[DeploymentOut.model_validate(r) for r in found.items], next_cursor=found.next_cursor
    )


@internal_router.post("/deployments/{deployment_id}/transfer")
async def internal_transfer(
    deployment_id: uuid.UUID,
    request: Request,
    caller: InternalCaller,
    delivery: DeliveryDep,
) -> DeploymentOut:
    """A deployment recorded by another node: transfer it through this node's tunnel only;
    answers the final record (200) or the deployment's error (502 with the record)."""
    try:
        body = await request.json()
    except ValueError as err:
        raise BadRequestError("Malformed model file.") from err
    record = await delivery.handed(
        deployment_id, caller.org_id, body if isinstance(body, dict) else {}
    )
    return DeploymentOut.model_validate(record)
