"""The batch planner: canary, counts and percentages, thresholds, auto-abort."""

from __future__ import annotations

import pytest

from visiona.rollouts.planner import (
    BatchSpec,
    Counts,
    Progress,
    abort_reason,
    finished,
    next_batch,
    parse_batch,
)


def progress(unbatched: int, **batches: dict[str, int]) -> Progress:
    """``progress(3, b0={"succeeded": 1})``: batch 0 with one success, 3 devices unbatched."""
    return Progress(
        batches={int(k[1:]): Counts(v) for k, v in batches.items()}, unbatched=unbatched
    )


@pytest.mark.parametrize(
    ("text", "spec"),
    [(10, BatchSpec(count=10)), ("10", BatchSpec(count=10)), ("25%", BatchSpec(percent=25))],
)
def test_batches_are_counts_or_percentages(text: int | str, spec: BatchSpec) -> None:
    assert parse_batch(text) == spec
    assert str(parse_batch(str(spec))) == str(spec)


@pytest.mark.parametrize("bad", ["0", "0%", "101%", "ten", "-1", "5 %%", ""])
def test_bad_batches_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="batch"):
        parse_batch(bad)


def test_a_percentage_rounds_up_and_takes_at_least_one() -> None:
    assert BatchSpec(percent=10).size(25) == 3
    assert BatchSpec(percent=1).size(5) == 1
    assert BatchSpec(count=4).size(2) == 4


def test_the_canary_goes_first_then_batches() -> None:
    spec = parse_batch("50%")
    assert next_batch(progress(10), canary=2, spec=spec, max_failure_percent=0) == (0, 2)
    assert next_batch(progress(10), canary=0, spec=spec, max_failure_percent=0) == (1, 5)
    assert next_batch(progress(1), canary=5, spec=spec, max_failure_percent=0) == (0, 1)
    after_canary = progress(8, b0={"succeeded": 2})
    assert next_batch(after_canary, canary=2, spec=spec, max_failure_percent=0) == (1, 5)


def test_the_next_batch_waits_for_queued_and_transferring() -> None:
    spec = parse_batch(2)
    for busy in ("queued", "transferring"):
        running = progress(4, b0={"succeeded": 1, busy: 1})
        assert next_batch(running, canary=2, spec=spec, max_failure_percent=100) is None


def test_offline_devices_hold_the_next_batch_beyond_the_threshold_only() -> None:
    spec = parse_batch(2)
    offline = progress(4, b0={"succeeded": 1, "waiting": 1})
    assert next_batch(offline, canary=2, spec=spec, max_failure_percent=0) is None
    assert next_batch(offline, canary=2, spec=spec, max_failure_percent=50) == (1, 2)
    cancelled = progress(4, b0={"succeeded": 1, "cancelled": 1})
    assert next_batch(cancelled, canary=2, spec=spec, max_failure_percent=0) == (1, 2)


def test_the_success_threshold_holds_the_next_batch() -> None:
    spec = parse_batch(2)
    half = progress(4, b1={"succeeded": 1, "failed": 1})
    assert next_batch(half, canary=0, spec=spec, max_failure_percent=49) is None
    assert next_batch(half, canary=0, spec=spec, max_failure_percent=50) == (2, 2)
    skipped = progress(4, b1={"skipped": 5, "failed": 1})
    assert next_batch(skipped, canary=0, spec=spec, max_failure_percent=0) is None


def test_failures_over_the_threshold_abort_with_the_reason() -> None:
    mid_batch = progress(0, b1={"failed": 2, "transferring": 8})
    reason = abort_reason(mid_batch, 10, 0)
    assert reason is not None
    assert "2 of 10 devices tried failed" in reason
    assert abort_reason(progress(0, b1={"failed": 1, "queued": 9}), 10, 0) is None
    done = progress(3, b0={"failed": 1, "succeeded": 1}, b1={"succeeded": 8})
    assert abort_reason(done, 10, 0) is None  # 1 of 10 overall, batch 1 fine
    canary = progress(3, b0={"failed": 1, "succeeded": 1})
    assert "failed" in (abort_reason(canary, 10, 0) or "")


def test_after_a_resume_only_a_new_failure_aborts_again() -> None:
    state = progress(5, b0={"failed": 2})
    assert abort_reason(state, 0, resumed_failed=2) is None
    assert abort_reason(progress(5, b0={"failed": 3}), 0, resumed_failed=2) is not None


def test_finished_when_every_device_is_batched_and_final() -> None:
    assert finished(progress(0, b0={"succeeded": 1}, b1={"failed": 1, "skipped": 2}))
    assert not finished(progress(1, b0={"succeeded": 1}))
    assert not finished(progress(0, b0={"succeeded": 1, "waiting": 1}))
    assert finished(progress(0))
