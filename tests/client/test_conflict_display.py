"""`visiona devices show` states a recent tunnel conflict with its cause and its fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from visiona.client.commands import _recent_conflict
from visiona.tunnel import conflict


def _event(ago: float) -> dict[str, object]:
    when = datetime.now(UTC) - timedelta(seconds=ago)
    return {
        "occurred_at": when.isoformat(),
        "detail": {"reason": conflict.CAUSE, "fix": conflict.FIX},
    }


def test_a_recent_conflict_is_shown_with_cause_and_fix() -> None:
    shown = _recent_conflict([_event(30)])
    assert shown is not None
    assert shown.startswith(conflict.CAUSE + " (since ")
    assert shown.endswith("; fix: " + conflict.FIX)


def test_an_old_or_no_conflict_is_not_shown() -> None:
    assert _recent_conflict([_event(3600)]) is None
    assert _recent_conflict([]) is None
