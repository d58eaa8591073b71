"""The batch planner: pure decisions over a rollout's counts (no I/O, no clock).

A rollout's devices are in batches: batch 0 is the canary (``canary`` devices, when
above 0), then batches of ``batch`` devices (a count, or ``N%`` of the rollout's
devices at the time the batch starts, at least 1). A device without a batch is
``queued`` for a later one.

- The next batch starts only when the current one is *done* (none of its devices
  ``queued`` or ``transferring``) and its success threshold is met: at most
  ``max_failure_percent`` of its devices that were tried (not skipped nor cancelled)
  failed, and at least ``100 - max_failure_percent`` percent of them (cancelled aside)
  succeeded or were skipped. So offline (``waiting``) devices of a batch hold the next
  one only beyond what the threshold allows (with 0 %, every device must succeed).
- Auto-abort: when the failed devices exceed ``max_failure_percent`` of the devices
  tried in the started batches, or the last done batch misses its threshold, the
  rollout pauses with the reason. After a resume, only a new failure pauses it again
  (``resumed_failed``: the failures when it was resumed).
- A rollout is finished when every device has a batch and an end state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Device states that end a device's part in a rollout.
FINAL = frozenset({"succeeded", "failed", "skipped", "cancelled"})
#: Every device state.
STATES = ("queued", "waiting", "transferring", "succeeded", "failed", "skipped", "cancelled")
_BATCH = re.compile(r"^\s*([0-9]{1,7})\s*(%?)\s*$")


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """The size of a batch: a count, or a percentage of the rollout's devices."""

    count: int | None = None
    percent: int | None = None

    def size(self, total: int) -> int:
        """The batch size for a rollout of ``total`` devices (at least 1)."""
        if self.count is not None:
            return max(1, self.count)
        return max(1, math.ceil(total * (self.percent or 100) / 100))

    def __str__(self) -> str:
        """``"10"`` or ``"25%"``: as stored and shown."""
        return f"{self.percent}%" if self.percent is not None else str(self.count)


def parse_batch(value: int | str) -> BatchSpec:
    """``10``, ``"10"`` or ``"25%"`` as a :class:`BatchSpec` (``ValueError`` otherwise:
    a count of at least 1, a percentage from 1 to 100)."""
    match = _BATCH.match(str(value))
    if match is None:
        raise ValueError("batch is a count (e.g. 10) or a percentage (e.g. '25%')")
    number, percent = int(match.group(1)), bool(match.group(2))
    if percent:
        if not 1 <= number <= 100:
            raise ValueError("a batch percentage is from 1% to 100%")
        return BatchSpec(percent=number)
    if number < 1:
        raise ValueError("a batch count is at least 1")
    return BatchSpec(count=number)


@dataclass(frozen=True, slots=True)
class Counts:
    """How many devices of a batch (or a rollout) are in each state."""

    by_state: Mapping[str, int] = field(default_factory=dict)

    def __getitem__(self, state: str) -> int:
        """The number of devices in ``state``."""
        return self.by_state.get(state, 0)

    @property
    def total(self) -> int:
        """Every device counted."""
        return sum(self.by_state.values())

    @property
    def tried(self) -> int:
        """Devices that were or are to be tried (not skipped nor cancelled)."""
        return self.total - self["skipped"] - self["cancelled"]

    @property
    def done(self) -> bool:
        """No device is queued or transferring (waiting ones do not hold a batch)."""
        return self["queued"] == 0 and self["transferring"] == 0

    @property
    def final(self) -> bool:
        """Every device has an end state."""
        return all(state in FINAL for state, n in self.by_state.items() if n)


@dataclass(frozen=True, slots=True)
class Progress:
    """A rollout's devices: the counts per batch, and how many have no batch yet."""

    batches: Mapping[int, Counts]
    unbatched: int

    @property
    def total(self) -> int:
        """Every device of the rollout."""
        return self.unbatched + sum(c.total for c in self.batches.values())

    @property
    def current(self) -> int | None:
        """The last batch started (None before the first)."""
        return max(self.batches) if self.batches else None

    def overall(self) -> Counts:
        """The counts of every batched device."""
        merged: dict[str, int] = {}
        for counts in self.batches.values():
            for state, n in counts.by_state.items():
                merged[state] = merged.get(state, 0) + n
        return Counts(merged)


def _over(failed: int, tried: int, max_failure_percent: int) -> bool:
    return failed * 100 > max_failure_percent * tried


def threshold_met(counts: Counts, max_failure_percent: int) -> bool:
    """The batch's success threshold: at most ``max_failure_percent`` of its tried devices
    failed, and at least ``100 - max_failure_percent`` percent of its devices (cancelled
    ones aside) succeeded or were skipped — so offline (``waiting``) devices hold the next
    batch only beyond what the threshold allows."""
    if _over(counts["failed"], counts.tried, max_failure_percent):
        return False
    ok = counts["succeeded"] + counts["skipped"]
    return ok * 100 >= (100 - max_failure_percent) * (counts.total - counts["cancelled"])


def abort_reason(progress: Progress, max_failure_percent: int, resumed_failed: int) -> str | None:
    """Why the rollout must pause now (auto-abort), or None.

    Only a failure since the last resume counts as new: a resumed rollout goes on until
    another device fails while the failures are still over the threshold.
    """
    overall = progress.overall()
    failed = overall["failed"]
    if failed <= resumed_failed:
        return None
    if _over(failed, overall.tried, max_failure_percent):
        return (
            f"{failed} of {overall.tried} devices tried failed "
            f"({failed * 100 // max(1, overall.tried)}%), more than the "
            f"{max_failure_percent}% allowed"
        )
    current = progress.current
    if current is not None:
        counts = progress.batches[current]
        if counts.done and not threshold_met(counts, max_failure_percent):
            return (
                f"batch {current}: {counts['failed']} of {counts.tried} devices failed, "
                f"more than the {max_failure_percent}% allowed"
            )
    return None


def next_batch(
    progress: Progress, *, canary: int, spec: BatchSpec, max_failure_percent: int
) -> tuple[int, int] | None:
    """The batch to start now and how many devices it takes, or None (the current batch
    is still running or missed its threshold, or no device is left without a batch)."""
    if progress.unbatched == 0:
        return None
    current = progress.current
    if current is None:
        if canary > 0:
            return 0, min(canary, progress.unbatched)
        return 1, min(spec.size(progress.total), progress.unbatched)
    counts = progress.batches[current]
    if not counts.done or not threshold_met(counts, max_failure_percent):
        return None
    return current + 1, min(spec.size(progress.total), progress.unbatched)


def finished(progress: Progress) -> bool:
    """Every device is in a batch and has an end state."""
    return progress.unbatched == 0 and all(c.final for c in progress.batches.values())
