"""Fixtures for the devices feature: the shared settings with a pair rate limit that
many tests from one client address never reach (the rate-limit test sets its own)."""

from __future__ import annotations

import uuid

import pytest

from visiona.kit import migrate
from visiona.kit.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The backend's settings, with the pair rate limit out of the way."""
    return settings.model_copy(update={"pair_rate_limit": 1_000_000})


@pytest.fixture
def fresh_settings(settings: Settings, backend: str, request: pytest.FixtureRequest) -> Settings:
    """Settings on a database of this test's own, migrated to head (for demo-data tests,
    whose fixed demo user would otherwise be shared by every test on PostgreSQL)."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{settings.data_dir / 'fresh.db'}"
    else:
        server = request.getfixturevalue("postgres")
        url = server.create_database(f"visiona_demo_{uuid.uuid4().hex[:12]}")
    migrate.upgrade(url)
    return settings.model_copy(update={"database_url": url})
