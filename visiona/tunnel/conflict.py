"""Tunnel conflicts: two agents connected as one device, knocking each other off.

Each new tunnel of a device supersedes the older one (close 4409). Two agents with the
same credentials (a copied session file, two agents paired with one serial) then
replace each other every few seconds. :class:`ConflictDetector` counts supersessions
per device: more than ``limit`` within ``window`` seconds starts an *episode*
(``tunnel_conflict``), which lasts until the device has gone ``window`` seconds
without one. During an episode the hub records one ``tunnel.conflict`` audit event
instead of a ``tunnel.superseded``/``tunnel.connected`` pair per flap.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable

#: What the user is told (audit detail, log line).
CAUSE = "two agents are connected as this device and keep replacing each other's tunnel"
FIX = (
    "run one agent per device: stop the other one, or pair it as its own device "
    "(its own --serial and --session-file, a new pairing token)"
)


class ConflictDetector:
    """Counts supersessions per device; says when an episode starts and whether one lasts."""

    def __init__(
        self, limit: int = 3, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """More than ``limit`` supersessions within ``window`` seconds is a conflict."""
        self._limit = limit
        self._window = window
        self._clock = clock
        self._times: dict[uuid.UUID, deque[float]] = {}
        self._episodes: dict[uuid.UUID, float] = {}  # device → its last supersession

    def superseded(self, device_id: uuid.UUID) -> bool:
        """Count one supersession of ``device_id``; True when it starts an episode."""
        now = self._clock()
        times = self._times.setdefault(device_id, deque())
        times.append(now)
        while times and now - times[0] > self._window:
            times.popleft()
        if self.in_conflict(device_id):
            self._episodes[device_id] = now
            return False
        if len(times) > self._limit:
            self._episodes[device_id] = now
            return True
        return False

    def in_conflict(self, device_id: uuid.UUID) -> bool:
        """Whether ``device_id`` is in an episode (a supersession within ``window`` s)."""
        last = self._episodes.get(device_id)
        if last is None:
            return False
        if self._clock() - last > self._window:
            del self._episodes[device_id]
            self._times.pop(device_id, None)
            return False
        return True

    def forget(self, device_id: uuid.UUID) -> None:
        """Drop what is counted for a device whose episode ended or that is gone."""
        if not self.in_conflict(device_id):
            self._times.pop(device_id, None)
