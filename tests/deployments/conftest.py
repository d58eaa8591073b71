"""Fixtures of the deployments tests: an agent that does not answer fails within a test."""

from __future__ import annotations

import pytest

from visiona.kit.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """An agent that does not answer fails within a test."""
    return settings.model_copy(update={"deploy_answer_timeout": 2.0})
