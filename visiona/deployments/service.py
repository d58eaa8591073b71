"""Use cases for deployments.

``POST /devices/{id}/deployments`` waits for the transfer (it is bounded by the
file size and ``deploy_answer_timeout``) and answers with the record in its final
state. Every state change is its own short transaction (:func:`prepare`,
:func:`mark`); no database connection is held while bytes move through the tunnel.
A request cancelled mid-transfer (client gone, server shutting down) still marks
its record ``failed``. The request and each final state record their audit event in
the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.service import SYSTEM, Actor
from visiona.deployments import repository
from visiona.deployments.repository import Deployment
from visiona.deployments.schemas import DeploymentOut, DeploymentStatus
from visiona.deployments.transfer import TransferFailedError, send_model
from visiona.devices import fleet_service as fleet
from visiona.devices import service as devices_service
from visiona.kit.clock import utcnow
from visiona.kit.errors import AppError, ConflictError, NotFoundError, StorageUnavailableError
from visiona.kit.pagination import Page, PageRequest
from visiona.models import service as models_service
from visiona.models.storage import ObjectMissingError

if TYPE_CHECKING:
    from visiona.kit.database import Database
    from visiona.models.storage import ObjectStorage
    from visiona.tunnel.link import TunnelLink

_LOGGER = logging.getLogger(__name__)

OFFLINE_REASON = "the device is not connected"
_FINAL_ACTIONS = {
    DeploymentStatus.SUCCEEDED: "deployment.succeeded",
    DeploymentStatus.STORED: "deployment.stored",
    DeploymentStatus.FAILED: "deployment.failed",
}


class ChipMismatchError(ConflictError):
    """The model is compiled for another chip than the device's dongle."""

    code = "chip_mismatch"
    default_message = "The model's target chip does not match the device type."


class ModelFileMissingError(ConflictError):
    """The model has no stored file to deploy."""

    code = "model_file_missing"
    default_message = "The model has no file to deploy."


class DeploymentInProgressError(ConflictError):
    """Another deployment to the device is still pending or transferring: 409 with its id."""

    code = "deployment_in_progress"
    default_message = "Another deployment to this device is in progress."

    def __init__(self, running: uuid.UUID) -> None:
        """Refuse because of the deployment ``running``."""
        super().__init__(f"Deployment {running} to this device is in progress; retry after it.")
        self.running = running

    def body(self) -> dict[str, Any]:
        """The error body, with the running deployment's id under ``deployment_id``."""
        body = super().body()
        body["error"]["deployment_id"] = str(self.running)
        return body


#: The reason recorded on a deployment its server never finished.
#: A transfer cancelled midway (client gone, shutdown): the hook never ran to its end.
INTERRUPTED_REASON = "the transfer was interrupted"
STALE_REASON = "no outcome within the transfer timeout (the server handling it stopped)"


class DeploymentFailedError(AppError):
    """The transfer failed: 502 with the reason and the (kept, ``failed``) record."""

    status_code = 502
    code = "deployment_failed"
    default_message = "The deployment failed."

    def __init__(self, record: Deployment, message: str | None = None) -> None:
        """Fail with ``record`` (its ``error`` is the message unless one is given)."""
        super().__init__(message or record.error or None)
        self.record = record

    def body(self) -> dict[str, Any]:
        """The error body, with the failed record under ``deployment``."""
        body = super().body()
        body["error"]["deployment"] = DeploymentOut.model_validate(self.record).model_dump(
            mode="json"
        )
        return body


class DeploymentOfflineError(DeploymentFailedError):
    """The device has no live tunnel: 502 ``device_offline``, the record is kept ``failed``."""

    code = "device_offline"
    default_message = "The device is not connected."


@dataclass(frozen=True, slots=True)
class ModelFile:
    """The model file a deployment sends (checked to exist when it was recorded)."""

    model_id: uuid.UUID
    storage_key: str
    sha256: str
    size: int
    chip: str


async def prepare(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    owner_id: uuid.UUID,
    device_id: uuid.UUID,
    model_id: uuid.UUID,
    *,
    transfer_timeout: float,
    actor: Actor | None = None,
) -> tuple[Deployment, ModelFile]:
    """Check the device and the model and record a ``pending`` deployment.

    Another organisation's or a deleted device or model is a 404 (``owner_id`` is who
    deploys); a model without a file or
    for another chip than the device's type is a 409 (and nothing is recorded); a
    device with a deployment still ``pending``/``transferring`` is a 409
    :class:`DeploymentInProgressError` — unless that one is older than
    ``transfer_timeout`` seconds (its server stopped), which is failed first.
    Returns the deployment and the model.
    """
    device = await devices_service.require_device(conn, org_id, device_id)
    model = await models_service.require_model(conn, org_id, model_id)
    if not model.storage_key or not model.sha256:
        raise ModelFileMissingError()
    device_type = (device.device_type or "").strip().lower()
    if device_type != model.target_chip:
        raise ChipMismatchError(
            f"The model is built for {model.target_chip} but the device is "
            f"{device_type or 'of an unknown type'}."
        )
    now = utcnow()
    stale = await repository.fail_stale(
        conn,
        device_id,
        cutoff=now - timedelta(seconds=transfer_timeout),
        now=now,
        reason=STALE_REASON,
    )
    for stale_id, stale_model in stale:
        _LOGGER.warning("deployment %s of device %s failed: %s", stale_id, device_id, STALE_REASON)
        await audit.record(
            conn,
            "deployment.failed",
            actor=audit.SYSTEM,
            owner_id=owner_id,
            org_id=org_id,
            target_id=stale_id,
            device_id=device_id,
            detail={"model_id": str(stale_model), "reason": STALE_REASON},
        )
    deployment = None
    for _ in range(2):  # the running one may end between the insert and the read: once more
        deployment = await repository.insert_deployment(
            conn,
            deployment_id=uuid.uuid4(),
            owner_user_id=owner_id,
            org_id=org_id,
            device_id=device_id,
            model_id=model_id,
            now=now,
        )
        if deployment is not None:
            break
        running = await repository.get_active(conn, device_id)
        if running is not None:
            raise DeploymentInProgressError(running.id)
    if deployment is None:  # pragma: no cover - two deployments ended and began meanwhile
        raise ConflictError("Another deployment to this device started meanwhile; retry.")
    await audit.record(
        conn,
        "deployment.requested",
        actor=actor or Actor.user(owner_id),
        owner_id=owner_id,
        org_id=org_id,
        target_id=deployment.id,
        device_id=device_id,
        detail={"model_id": str(model_id)},
    )
    file = ModelFile(
        model_id=model.id,
        storage_key=model.storage_key,
        sha256=model.sha256,
        size=model.file_size,
        chip=model.target_chip,
    )
    return deployment, file


async def mark(
    db: Database,
    deployment_id: uuid.UUID,
    status: DeploymentStatus,
    error: str | None = None,
    *,
    sha256: str | None = None,
) -> Deployment:
    """Move the deployment to ``status`` in its own transaction; return the record.

    A record that is already final is left as it is (and returned as it is). Reaching
    a final state records ``deployment.succeeded`` or ``deployment.failed`` (with the
    reason) in the same transaction, the system as actor. Reaching ``succeeded`` or
    ``stored`` with the file's ``sha256`` also records the model as the device's
    current model (the one before becomes its previous), in the same transaction.
    """
    # unit of work: the named exception of a service opening its own — the transfer
    # records each state change in a short transaction of its own, so nothing is held
    # open while the file crosses the tunnel (docs/database.md, "Unit of work").
    async with db.transaction() as conn:
        now = utcnow()
        record = await repository.set_status(
            conn, deployment_id, status=status, now=now, error=error
        )
        if record is not None:
            await record_outcome(conn, record, status)
            if status.delivered and sha256:
                await fleet.record_current_model(
                    conn, record.device_id, record.model_id, sha256, now
                )
        if record is None:
            record = await repository.get_deployment(conn, deployment_id)
    if record is None:  # pragma: no cover - records are never deleted
        raise NotFoundError("Deployment not found.")
    return record


#: The detail of a lost transfer found delivered by the agent's report.
CONFIRMED_NOTICE = (
    "the server lost this transfer's outcome ({reason}); the agent then reported running the model"
)


async def confirm_delivered(
    conn: AsyncConnection, deployment_id: uuid.UUID, lost: Collection[str]
) -> Deployment | None:
    """A transfer failed as lost (one of the ``lost`` reasons) did deliver: the agent
    reports running its model. Move the record to ``succeeded`` (its detail says so)
    and record ``deployment.succeeded`` in the same transaction; None when the record is
    not such a failure (nothing changes)."""
    before = await repository.get_deployment(conn, deployment_id)
    reason = before.error if before is not None else None
    if reason is None or reason not in lost:
        return None
    notice = CONFIRMED_NOTICE.format(reason=reason)
    record = await repository.confirm_delivered(
        conn, deployment_id, lost=[reason], notice=notice, now=utcnow()
    )
    if record is None:
        return None
    _LOGGER.info("deployment %s: %s", deployment_id, notice)
    await audit.record(
        conn,
        "deployment.succeeded",
        actor=SYSTEM,
        owner_id=record.owner_user_id,
        org_id=record.org_id,
        target_id=record.id,
        device_id=record.device_id,
        detail={"model_id": str(record.model_id), "detail": notice},
    )
    return record


async def record_outcome(
    conn: AsyncConnection, record: Deployment, status: DeploymentStatus
) -> None:
    """Record ``deployment.succeeded`` / ``deployment.failed`` (with the reason) on ``conn``,
    the transaction that just moved ``record`` to ``status``; other states record nothing."""
    action = _FINAL_ACTIONS.get(status)
    if action is None:
        return
    detail: dict[str, str] = {"model_id": str(record.model_id)}
    if status is DeploymentStatus.FAILED:
        detail["reason"] = record.error or ""
    elif status is DeploymentStatus.STORED:
        detail["detail"] = record.error or ""
    await audit.record(
        conn,
        action,
        actor=SYSTEM,
        owner_id=record.owner_user_id,
        org_id=record.org_id,
        target_id=record.id,
        device_id=record.device_id,
        detail=detail,
    )


async def transfer(
    db: Database,
    storage: ObjectStorage,
    link: TunnelLink,
    deployment: Deployment,
    model: ModelFile,
    *,
    answer_timeout: float,
    transfer_timeout: float,
) -> Deployment:
    """Send the model through ``link`` and record the outcome; return the final record.

    ``transferring`` is recorded before the first byte; ``succeeded`` once the agent
    answered 200 after its deploy hook ran (or said ``already``: it runs that very
    model, its hook ran for it before), ``stored`` when it answered 200 without a
    hook to run (the notice saying where the file is goes in the record), ``failed``
    with the reason otherwise (also after ``transfer_timeout`` seconds in all), and also
    when this task is cancelled (the record never stays ``transferring``). While it
    runs, ``link.deployments`` counts it (the proxy's ``refuse`` rule reads it).
    """
    deployment_id = deployment.id
    await mark(db, deployment_id, DeploymentStatus.TRANSFERRING)
    link.deployments += 1
    try:
        async with asyncio.timeout(transfer_timeout):
            answer = await _send(storage, link, model, answer_timeout)
    except TimeoutError:
        reason = f"the deployment did not finish within {transfer_timeout:g}s"
        _LOGGER.warning("deployment %s failed: %s", deployment_id, reason)
        return await mark(db, deployment_id, DeploymentStatus.FAILED, reason)
    except TransferFailedError as err:
        _LOGGER.warning("deployment %s failed: %s", deployment_id, err)
        return await mark(db, deployment_id, DeploymentStatus.FAILED, str(err))
    except BaseException:
        # Cancelled (client gone, shutdown) or an unexpected error: never leave it transferring.
        await asyncio.shield(mark(db, deployment_id, DeploymentStatus.FAILED, INTERRUPTED_REASON))
        raise
    finally:
        link.deployments -= 1
    _LOGGER.info(
        "deployment %s: model %s is on device %s", deployment_id, model.model_id, link.device_id
    )
    if answer.get("hook") == "already":
        _LOGGER.info(
            "deployment %s: device %s already ran model %s; its hook was not run again",
            deployment_id,
            link.device_id,
            model.model_id,
        )
    if answer.get("hook") == "none":
        notice = f"stored at {answer.get('path')} on the PC; no deploy hook configured"
        return await mark(
            db, deployment_id, DeploymentStatus.STORED, notice[:500], sha256=model.sha256
        )
    return await mark(db, deployment_id, DeploymentStatus.SUCCEEDED, sha256=model.sha256)


async def _send(
    storage: ObjectStorage, link: TunnelLink, model: ModelFile, answer_timeout: float
) -> dict[str, Any]:
    """The agent's JSON answer (``hook``: ``ran`` or ``none`` from agents that say it)."""
    """Open the stored file and send it through the tunnel (:class:`TransferFailedError`)."""
    try:
        opened = await storage.open(model.storage_key)
    except StorageUnavailableError as err:
        raise TransferFailedError(f"the model file could not be read: {err.message}") from err
    except ObjectMissingError as err:
        raise TransferFailedError("the model file is missing from storage") from err
    return await send_model(
        link.session,
        opened.chunks,
        model_id=model.model_id,
        size=model.size,
        sha256=model.sha256,
        chip=model.chip,
        answer_timeout=answer_timeout,
    )


async def list_deployments(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    device_id: uuid.UUID,
    page: PageRequest,
) -> Page[Deployment]:
    """One page of the device's deployments, newest first (404 when not the organisation's
    device)."""
    await devices_service.require_device(conn, org_id, device_id)
    return await repository.list_page(conn, org_id, device_id, page)
