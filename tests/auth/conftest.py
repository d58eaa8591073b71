"""The auth tests run on every web-session store the server can pick.

``sqlite``: the embedded default, sessions in the SQLite file (SQL store);
``postgres``: PostgreSQL + Redis (Redis store, production); ``postgres-no-redis``:
PostgreSQL alone (SQL store on PostgreSQL, the documented fallback).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.settings import make_settings
from visiona.kit import migrate
from visiona.kit.settings import Settings

STORES = ["sqlite", "postgres", "postgres-no-redis"]


@pytest.fixture(params=STORES)
def backend(request: pytest.FixtureRequest) -> str:
    """The SQL backend and session store under test."""
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for ``backend`` (see the module docstring)."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'visiona.db'}"
        migrate.upgrade(url)
        return make_settings(database_url=url, data_dir=tmp_path, redis_url=None)
    pg = request.getfixturevalue("pg_url")
    if backend == "postgres-no-redis":
        return make_settings(database_url=pg, data_dir=tmp_path, redis_url=None)
    redis = request.getfixturevalue("redis_url")
    return make_settings(database_url=pg, data_dir=tmp_path, redis_url=redis)
