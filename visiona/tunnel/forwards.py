"""The live TCP forwards of a node: admission limits, their records and their counters.

A forward is one WebSocket of ``GET /devices/{id}/tcp/{port}`` carrying one TCP
connection to the device's PC (visiona/tunnel/tcp_endpoints.py). At most
``forward_max_per_device`` forwards per device and ``forward_max_per_user`` per user
are open at once on a node; one more is refused with 429 ``too_many_forwards`` before
the upgrade. The counters are read by ``/metrics``.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from visiona.kit.errors import AppError, ForbiddenError

if TYPE_CHECKING:
    from visiona.kit.metrics import Metrics
    from visiona.kit.settings import Settings

#: Why a forward was refused or ended (the ``reason`` label of the metrics).
REFUSALS = ("limit", "not_allowed", "refused", "unreachable", "unsupported", "timeout", "offline")


class TooManyForwardsError(AppError):
    """The device or the user has as many forwards open as the settings allow."""

    status_code = 429
    code = "too_many_forwards"
    default_message = "Too many forwarded connections are open; close one and retry."

    def __init__(self, message: str) -> None:
        """Refuse; the client may retry once one of its forwards has ended."""
        super().__init__(message, headers={"Retry-After": "1"})


class PortNotAllowedError(ForbiddenError):
    """The device's agent reported its allowed ports, and this one is not among them."""

    code = "port_not_allowed"
    default_message = "The device's agent does not allow this port."


@dataclass(eq=False)
class Forward:
    """One open forward: who, where, since when, and the bytes it carried."""

    device_id: uuid.UUID
    org_id: uuid.UUID
    user_id: uuid.UUID
    port: int
    #: the API key the caller used, if any: audit events name it instead of the user
    api_key_id: uuid.UUID | None = None
    started: float = field(default_factory=time.monotonic)
    bytes_to_device: int = 0
    bytes_from_device: int = 0

    def duration(self) -> float:
        """Seconds since it opened."""
        return time.monotonic() - self.started


class Forwards:
    """This node's open forwards and its forward counters."""

    def __init__(self, settings: Settings) -> None:
        """No forward open yet."""
        self._per_device_limit = settings.forward_max_per_device
        self._per_user_limit = settings.forward_max_per_user
        self._open: set[Forward] = set()
        self._per_device: Counter[uuid.UUID] = Counter()
        self._per_user: Counter[uuid.UUID] = Counter()
        self.opened = 0
        self.refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self._bytes_to_devices = 0
        self._bytes_from_devices = 0

    def admit(self, device_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Check the limits (:class:`TooManyForwardsError`); nothing is taken yet."""
        if self._per_device[device_id] >= self._per_device_limit:
            self.refused["limit"] += 1
            raise TooManyForwardsError(
                f"The device has {self._per_device_limit} forwarded connections open already."
            )
        if self._per_user[user_id] >= self._per_user_limit:
            self.refused["limit"] += 1
            raise TooManyForwardsError(
                f"You have {self._per_user_limit} forwarded connections open already."
            )

    def add(self, forward: Forward) -> None:
        """Count ``forward`` as open (after :meth:`admit`, before any await)."""
        self._open.add(forward)
        self._per_device[forward.device_id] += 1
        self._per_user[forward.user_id] += 1

    def opened_one(self) -> None:
        """The agent accepted a forward (its bytes flow)."""
        self.opened += 1

    def remove(self, forward: Forward) -> None:
        """``forward`` ended: give its slots back and keep its bytes in the totals."""
        if forward not in self._open:
            return
        self._open.discard(forward)
        for counter, key in (
            (self._per_device, forward.device_id),
            (self._per_user, forward.user_id),
        ):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        self._bytes_to_devices += forward.bytes_to_device
        self._bytes_from_devices += forward.bytes_from_device

    def of_device(self, device_id: uuid.UUID) -> list[Forward]:
        """The device's open forwards."""
        return [forward for forward in self._open if forward.device_id == device_id]

    def count(self) -> int:
        """Open forwards on this node."""
        return len(self._open)

    def bytes_to_devices(self) -> int:
        """Bytes forwarded to devices since start (open forwards included)."""
        return self._bytes_to_devices + sum(f.bytes_to_device for f in self._open)

    def bytes_from_devices(self) -> int:
        """Bytes forwarded from devices since start (open forwards included)."""
        return self._bytes_from_devices + sum(f.bytes_from_device for f in self._open)

    def register_metrics(self, metrics: Metrics) -> None:
        """Expose the forward gauges and counters on ``/metrics``."""
        metrics.gauge("visiona_forwards_open", "TCP forwards open on this node.", self.count)
        metrics.counter(
            "visiona_forwards_opened",
            "TCP forwards the agents accepted on this node since start.",
            lambda: self.opened,
        )
        metrics.labelled_counter(
            "visiona_forwards_refused",
            "TCP forwards refused or failed before their bytes flowed, by reason.",
            "reason",
            lambda: self.refused,
        )
        metrics.counter(
            "visiona_forward_bytes_to_devices",
            "Bytes forwarded to devices' TCP ports by this node since start.",
            self.bytes_to_devices,
        )
        metrics.counter(
            "visiona_forward_bytes_from_devices",
            "Bytes forwarded from devices' TCP ports by this node since start.",
            self.bytes_from_devices,
        )
