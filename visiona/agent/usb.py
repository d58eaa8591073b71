"""The dongle's USB status: Kneron devices (USB vendor id 0x3231) found with pyusb."""

from __future__ import annotations

import logging

from visiona.wire import UsbStatus

_LOGGER = logging.getLogger(__name__)
KNERON_VENDOR_ID = 0x3231


def usb_status() -> UsbStatus:
    """``online`` when a Kneron dongle is plugged in, ``offline`` when none is, and
    ``unknown`` when USB cannot be inspected (no libusb backend, no permission)."""
    try:
        import usb.core  # type: ignore[import-untyped]  # noqa: PLC0415 - pyusb has no stubs; imported late: libusb may be missing

        found = usb.core.find(idVendor=KNERON_VENDOR_ID)
    except Exception as err:  # noqa: BLE001 - NoBackendError, USBError, ImportError: all mean unknown
        _LOGGER.debug("agent: USB not inspectable: %s", type(err).__name__)
        return "unknown"
    return "online" if found is not None else "offline"
