"""The webhook settings: the documented retry schedule (at least 24 hours), and the
values refused at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.support.settings import make_settings
from visiona.kit.settings import parse_schedule


def test_the_default_schedule_retries_for_more_than_a_day() -> None:
    delays = make_settings().webhook_retry_delays
    assert delays == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert sum(delays) >= 24 * 3600


def test_a_schedule_is_comma_separated_seconds_starting_at_zero() -> None:
    assert parse_schedule("0, 0.5,2") == (0.0, 0.5, 2.0)
    for bad in ("", "0,x", "0,-1", "5,10", "0,inf", "0,nan"):
        with pytest.raises(ValueError, match="retry schedule"):
            parse_schedule(bad)
    with pytest.raises(ValidationError):
        make_settings(webhook_retry_schedule="1,2")


def test_the_lease_must_outlive_an_attempt() -> None:
    with pytest.raises(ValidationError, match="LEASE"):
        make_settings(webhook_timeout=30.0, webhook_lease_seconds=30.0)
    settings = make_settings(webhook_timeout=2.0, webhook_lease_seconds=3.0)
    assert settings.webhook_lease_seconds == 3.0


def test_internal_targets_are_refused_unless_the_operator_allows_them() -> None:
    assert make_settings().webhook_allow_private is False
