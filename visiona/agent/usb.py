"""The dongle's USB status and type: Kneron devices (USB vendor id 0x3231) found with pyusb.

Product ids are those of Kneron PLUS (``kp.ProductId``): 0x0100 KL520, 0x0720 KL720
(0x0200 before a firmware update), 0x0630 KL630, 0x0732 KL730.

pyusb looks for its backends at every ``usb.core.find()`` that is not given one, and
where libusb is missing that look runs ``ldconfig`` and ``gcc`` in subprocesses
(``ctypes.util.find_library``): at every status poll, in the agent's worker thread,
holding the GIL the tunnel's loop needs. The backend is therefore looked up once and
kept; a missing one is looked for again at most every :data:`BACKEND_RETRY` seconds
(libusb may be installed while the agent runs).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
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


#: Seconds between two looks for a missing libusb backend.
BACKEND_RETRY = 600.0


class NoBackendError(RuntimeError):
    """No libusb backend is installed (looked for at most every ``BACKEND_RETRY`` s)."""


def _probe_backends() -> Any:
    """pyusb's first available backend (libusb 1.0, OpenUSB, libusb 0.1), or None."""
    from usb.backend import libusb0, libusb1, openusb  # type: ignore[import-untyped]  # noqa: PLC0415 - pyusb has no stubs; imported late: it may be missing

    for module in (libusb1, openusb, libusb0):
        backend = module.get_backend()
        if backend is not None:
            return backend
    return None


class BackendCache:
    """The libusb backend, found once; a missing one is retried after ``retry`` seconds."""

    def __init__(
        self,
        probe: Callable[[], Any] = _probe_backends,
        retry: float = BACKEND_RETRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Look with ``probe`` (None: no backend), timed by ``clock``."""
        self._probe = probe
        self._retry = retry
        self._clock = clock
        self._backend: Any = None
        self._missing_since: float | None = None
        self._lock = threading.Lock()  # polls run in worker threads

    def get(self) -> Any:
        """The backend; :class:`NoBackendError` while none is installed."""
        with self._lock:
            if self._backend is not None:
                return self._backend
            now = self._clock()
            if self._missing_since is not None and now - self._missing_since < self._retry:
                raise NoBackendError("no libusb backend")
            self._backend = self._probe()
            if self._backend is None:
                self._missing_since = now
                raise NoBackendError("no libusb backend")
            return self._backend


_BACKENDS = BackendCache()


def _find() -> Any:
    import usb.core  # type: ignore[import-untyped]  # noqa: PLC0415 - pyusb has no stubs; imported late: libusb may be missing

    return usb.core.find(idVendor=KNERON_VENDOR_ID, backend=_BACKENDS.get())


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


def dongle_serial() -> str | None:
    """The plugged-in dongle's USB serial number, or None (no dongle, none set, no access)."""
    try:
        found = _find()
        if found is None:
            return None
        serial = found.serial_number
    except Exception as err:  # noqa: BLE001 - NoBackendError, USBError, ValueError: all mean none
        _hint_once(_reason(err))
        return None
    text = str(serial or "").strip()
    return text[:128] if text and text.isprintable() else None


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
