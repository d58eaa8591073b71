"""Fixtures for the devices feature: the shared settings with a pair rate limit that
many tests from one client address never reach (the rate-limit test sets its own)."""

from __future__ import annotations

import pytest

from visiona.kit.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The backend's settings, with the pair rate limit out of the way."""
    return settings.model_copy(update={"pair_rate_limit": 1_000_000})
