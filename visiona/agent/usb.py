"""The dongle's USB status and type: Kneron devices (USB vendor id 0x3231) found with pyusb.

Product ids are those of Kneron PLUS (``kp.ProductId``): 0x0100 KL520, 0x0720 KL720
(0x0200 before a firmware update), 0x0630 KL630, 0x0732 KL730.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from visiona.wire import UsbStatus

_LOGGER = logging.getLogger(__name__)
KNERON_VENDOR_ID = 0x3231
PRODUCT_TYPES = {
    0x0100: "kl520",
    0x0720: "kl720",
    0x0200: "kl720",
    0x0630: "kl630",
    0x0732: "kl730",
}
UDEV_RULE = 'SUBSYSTEM=="usb", ATTRS{idVendor}=="3231", MODE="0666"'
_hinted = False


def fix_hint(reason: str) -> str:
    """What to do when USB cannot be inspected, for this platform."""
    if sys.platform.startswith("linux"):
        return (
            f"USB status unknown ({reason}): install libusb (apt install libusb-1.0-0) and "
            "allow your user to open Kneron dongles with a udev rule: "
            f"echo '{UDEV_RULE}' | sudo tee /etc/udev/rules.d/99-kneron.rules && "
            "sudo udevadm control --reload-rules && sudo udevadm trigger; then replug the dongle"
        )
    return f"USB status unknown ({reason}): install libusb-1.0 for pyusb"


def _hint_once(reason: str) -> None:
    global _hinted  # noqa: PLW0603 - one hint per process, whatever calls it
    if not _hinted:
        _hinted = True
        _LOGGER.info("agent: %s", fix_hint(reason))


def _find() -> Any:
    import usb.core  # type: ignore[import-untyped]  # noqa: PLC0415 - pyusb has no stubs; imported late: libusb may be missing

    return usb.core.find(idVendor=KNERON_VENDOR_ID)


def _reason(err: Exception) -> str:
    name = type(err).__name__
    if name == "NoBackendError":
        return "no libusb backend"
    if isinstance(err, PermissionError) or getattr(err, "errno", None) == 13:
        return "no permission to open USB devices"
    return name


def usb_status() -> UsbStatus:
    """``online`` when a Kneron dongle is plugged in, ``offline`` when none is, and
    ``unknown`` when USB cannot be inspected (no libusb backend, no permission; said
    once at INFO with the fix)."""
    try:
        found = _find()
    except Exception as err:  # noqa: BLE001 - NoBackendError, USBError, ImportError: all mean unknown
        _hint_once(_reason(err))
        return "unknown"
    return "online" if found is not None else "offline"


def device_type_of(product_id: int) -> str | None:
    """``kl520`` … ``kl730`` for a Kneron product id, None when unknown."""
    return PRODUCT_TYPES.get(product_id)


def detect_device_type() -> str | None:
    """The plugged-in dongle's type from its product id (None: none found or unknown)."""
    try:
        found = _find()
    except Exception as err:  # noqa: BLE001 - same as usb_status
        _hint_once(_reason(err))
        return None
    if found is None:
        return None
    kind = device_type_of(int(found.idProduct))
    if kind is None:
        _LOGGER.info("agent: unknown Kneron product id 0x%04x", int(found.idProduct))
    else:
        _LOGGER.info("agent: found a %s dongle", kind.upper())
    return kind
