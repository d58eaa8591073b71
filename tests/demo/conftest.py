"""Fixtures of the demo-data tests: a database of each test's own."""

from __future__ import annotations

import pytest

from visiona.kit import migrate
from visiona.kit.settings import Settings


@pytest.fixture
def fresh_settings(settings: Settings, backend: str, request: pytest.FixtureRequest) -> Settings:
    """Settings on a database of this test's own, migrated to head (the fixed demo user
    must not be shared by the tests of this module)."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{settings.data_dir / 'fresh.db'}"
    else:
        server = request.getfixturevalue("postgres")
        return settings.model_copy(
            update={"database_url": server.clone_database(request.getfixturevalue("pg_template"))}
        )
    migrate.upgrade(url)
    return settings.model_copy(update={"database_url": url})
