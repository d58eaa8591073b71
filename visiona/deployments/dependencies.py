"""What the deployments feature hands to routes: its :class:`Delivery`.

Built by the composition root (:mod:`visiona.app`) in the lifespan, before the first
request, from the database, the settings, the model storage, the tunnel hub and the
cluster.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from visiona.deployments.delivery import Delivery
from visiona.kit.runtime import Provided

#: Deployments' transfers, here or on the node holding the device's tunnel.
DELIVERY = Provided[Delivery]("deployment_delivery")
DeliveryDep = Annotated[Delivery, Depends(DELIVERY.dependency)]

__all__ = ["DELIVERY", "DeliveryDep"]
