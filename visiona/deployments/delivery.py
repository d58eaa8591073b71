"""Delivering a recorded deployment: through this node's tunnel, or the node holding it.

:class:`Delivery` is the deployments feature's live object (built by the composition
root, handed to routes by :mod:`visiona.deployments.dependencies`). It asks the cluster
where the device's tunnel is (:meth:`~visiona.cluster.service.Cluster.at_device`):

- here: the transfer runs through this node's tunnel under a run lease
  (:meth:`~visiona.cluster.service.Cluster.running`), and records its outcome;
- one hop away: the owning node runs it (:meth:`Delivery.handed`) and records the
  outcome, which this node reads back from the database. The call travels over the
  node link (:meth:`~visiona.cluster.service.Peer.call`, handled there by
  :meth:`Delivery.on_link_call`, which the composition root registers for the kind
  ``deployments``); older nodes reach the same through the internal route
  ``POST /internal/v1/deployments/{id}/transfer`` (the model file in the JSON body,
  :func:`visiona.deployments.endpoints.internal_transfer`);
- nowhere: the record is ``failed`` and 502 ``device_offline`` is raised with it.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import TYPE_CHECKING

from visiona.deployments import repository
from visiona.deployments.schemas import DeploymentStatus
from visiona.deployments.service import (
    OFFLINE_REASON,
    DeploymentFailedError,
    DeploymentOfflineError,
    ModelFile,
    mark,
    transfer,
)
from visiona.kit.errors import BadRequestError, NotFoundError

if TYPE_CHECKING:
    from visiona.cluster.service import Cluster, Peer
    from visiona.deployments.repository import Deployment
    from visiona.kit.database import Database
    from visiona.kit.settings import Settings
    from visiona.models.storage import ObjectStorage
    from visiona.tunnel.hub import TunnelHub

_LOGGER = logging.getLogger(__name__)
OWNER_UNREACHABLE = "the server node holding the device's tunnel is unreachable"
OWNER_LOST = "the server node holding the device's tunnel was lost during the transfer"
#: The device's tunnel is not here nor anywhere (the same words as the proxy's 502).
OFFLINE_MESSAGE = DeploymentOfflineError.default_message


def model_file_body(model: ModelFile) -> dict[str, object]:
    """The model file as the internal route's JSON body."""
    body = dataclasses.asdict(model)
    body["model_id"] = str(model.model_id)
    return body


def model_file_of(body: dict[str, object]) -> ModelFile:
    """The internal route's JSON body back as a model file (ValueError when malformed)."""
    try:
        return ModelFile(
            model_id=uuid.UUID(str(body["model_id"])),
            storage_key=str(body["storage_key"]),
            sha256=str(body["sha256"]),
            size=int(str(body["size"])),
            chip=str(body["chip"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError("malformed model file") from err


#: The kind of a transfer call on the node link (the first segment of its path).
LINK_KIND = "deployments"


def transfer_path(deployment_id: uuid.UUID) -> str:
    """The internal route (under ``/internal/v1``) that runs a transfer on the owning node."""
    return f"/{LINK_KIND}/{deployment_id}/transfer"


def deployment_of_path(path: str) -> uuid.UUID:
    """The deployment id of a :func:`transfer_path` (400 ``bad_request`` otherwise)."""
    kind, _, rest = path.strip("/").partition("/")
    raw, _, action = rest.partition("/")
    try:
        deployment_id = uuid.UUID(raw)
    except ValueError as err:
        raise BadRequestError("Unknown deployments call.") from err
    if kind != LINK_KIND or action != "transfer":
        raise BadRequestError("Unknown deployments call.")
    return deployment_id


class Delivery:
    """Deployments' transfers on this node and to the node holding a device's tunnel."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        storage: ObjectStorage,
        hub: TunnelHub,
        cluster: Cluster,
    ) -> None:
        """Transfer ``storage``'s files through ``hub``'s tunnels, or via ``cluster``."""
        self._db = db
        self._storage = storage
        self._hub = hub
        self._cluster = cluster
        self._answer_timeout = settings.deploy_answer_timeout
        self._transfer_timeout = settings.deploy_transfer_timeout

    async def deliver(self, deployment: Deployment, model: ModelFile) -> Deployment:
        """Run the deployment here, or on the node holding the tunnel; return the final
        record (:class:`DeploymentOfflineError` with the ``failed`` record when no node
        holds a tunnel of the device, or its node cannot be reached)."""

        async def here() -> Deployment:
            return await self.here(deployment, model)

        async def there(peer: Peer) -> Deployment:
            return await self._there(peer, deployment, model)

        return await self._cluster.at_device(deployment.device_id, here=here, there=there)

    async def here(self, deployment: Deployment, model: ModelFile) -> Deployment:
        """Transfer through this node's tunnel (under a run lease in a cluster); no tunnel
        of the deployment's owner here → ``failed`` and :class:`DeploymentOfflineError`."""
        link = self._hub.get(deployment.device_id)
        if link is None or link.org_id != deployment.org_id:
            failed = await mark(self._db, deployment.id, DeploymentStatus.FAILED, OFFLINE_REASON)
            raise DeploymentOfflineError(failed, OFFLINE_MESSAGE)
        async with self._cluster.running(deployment.id):
            return await transfer(
                self._db,
                self._storage,
                link,
                deployment,
                model,
                answer_timeout=self._answer_timeout,
                transfer_timeout=self._transfer_timeout,
            )

    async def handed(
        self, deployment_id: uuid.UUID, org_id: uuid.UUID, body: dict[str, object]
    ) -> Deployment:
        """Run a deployment another node recorded (in ``org_id``) through this node's
        tunnel only; return the delivered record, or raise the deployment's
        error (with the record). Malformed model file → 400; not the organisation's → 404."""
        try:
            model = model_file_of(body)
        except ValueError as err:
            raise BadRequestError("Malformed model file.") from err
        # unit of work: the record's check only; each state change is its own (as on one node)
        async with self._db.transaction() as conn:
            deployment = await repository.get_deployment(conn, deployment_id)
        if deployment is None or deployment.org_id != org_id:
            raise NotFoundError("Deployment not found.")
        record = await self.here(deployment, model)
        if not record.status.delivered:
            raise DeploymentFailedError(record)
        return record

    async def on_link_call(
        self, path: str, user_id: uuid.UUID, org_id: uuid.UUID, body: dict[str, object]
    ) -> None:
        """The node link's handler of ``deployments`` calls (:func:`transfer_path`)."""
        del user_id  # the deployment names who requested it
        await self.handed(deployment_of_path(path), org_id, body)

    async def _there(self, peer: Peer, deployment: Deployment, model: ModelFile) -> Deployment:
        """Have ``peer`` run the transfer; read the outcome it recorded."""
        db = self._db
        outcome = await peer.call(
            transfer_path(deployment.id),
            user_id=deployment.owner_user_id,
            org_id=deployment.org_id,
            body=model_file_body(model),
        )
        if outcome.unreachable:
            failed = await mark(db, deployment.id, DeploymentStatus.FAILED, OWNER_UNREACHABLE)
            raise DeploymentOfflineError(failed, OWNER_UNREACHABLE)
        if outcome.lost:
            return await mark(db, deployment.id, DeploymentStatus.FAILED, OWNER_LOST)
        # The owning node recorded the final state, which ``mark`` leaves as it is and
        # returns; an answer that recorded none (the node refused the call) fails it here.
        reason = f"the server node holding the device's tunnel answered {outcome.status}"
        record = await mark(db, deployment.id, DeploymentStatus.FAILED, reason)
        if outcome.code == "device_offline":
            raise DeploymentOfflineError(record, OFFLINE_MESSAGE)
        return record
