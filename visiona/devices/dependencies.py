"""What the devices feature hands to routes: :class:`~visiona.devices.service.Devices`,
the one way to read devices with their effective ``remote_status``.

Built by the composition root (:mod:`visiona.app`) from settings in the lifespan.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from visiona.devices.service import Devices
from visiona.kit.runtime import Provided

#: Reads of devices (stale tunnels read ``offline``).
DEVICES = Provided[Devices]("devices")
DevicesDep = Annotated[Devices, Depends(DEVICES.dependency)]

__all__ = ["DEVICES", "DevicesDep"]
