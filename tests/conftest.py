"""Shared fixtures: throwaway PostgreSQL and Redis servers, settings per backend, an app client,
the app served live on loopback.

Every repository and API test that touches SQL runs on both SQLite and PostgreSQL
(the ``settings`` fixture is parametrized); the schema is always built by the
migrations, never by ``create_all``. Isolation: on SQLite every test has its own
database file; on PostgreSQL every test module has its own database, cloned with
``CREATE DATABASE … TEMPLATE`` from one migrated once per run (a clone takes a fraction
of a second where migrating takes seconds), and every table is emptied after each test;
Redis is flushed (``FLUSHDB``) before each test that uses it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from testkit.isolation import PgAdmin, flush_redis
from testkit.live import LiveServer, serve_app
from testkit.servers import PostgresServer, RedisServer
from tests.support.settings import LIFESPAN_TIMEOUT, make_settings
from visiona.app import create_app
from visiona.kit import migrate
from visiona.kit.settings import Settings

BACKENDS = ["sqlite", "postgres"]
_BROWSER_TESTS = Path(__file__).parent / "console"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser tests last.

    Playwright's sync API keeps an event loop running in the main thread for as long
    as its session-scoped browser lives, and pytest-asyncio cannot start a test's
    loop while one runs: every async test after the first browser test would fail
    at setup. After all the others, the browser tests run undisturbed.
    """
    items.sort(key=lambda item: item.path.is_relative_to(_BROWSER_TESTS))


@pytest.fixture(autouse=True)
def _root_log_handlers() -> Iterator[None]:
    """Put the root logger's handlers back after each test.

    A command run in process (``CliRunner``: ``visiona audit prune``, ``migrate``...)
    installs the stderr handler of :func:`visiona.kit.logs.configure_logging` on the
    stream the runner captured; once that stream is closed, every later log line (a
    live server's access log in another test) printed "--- Logging error ---" into
    whatever stderr was current, and tests reading their command's stderr failed.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole run."""
    server = PostgresServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway Redis server for the whole run."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def pg_template(postgres: PostgresServer) -> str:
    """The name of a PostgreSQL database migrated to head, cloned by :func:`pg_url`."""
    name = "visiona_template"
    migrate.upgrade(postgres.create_database(name))  # disposes its engine: no session left
    return name


@pytest.fixture(scope="session")
def pg_admin(postgres: PostgresServer) -> Iterator[PgAdmin]:
    """Administrative connections to the run's PostgreSQL (clones, drops, truncation)."""
    admin = PgAdmin(postgres)
    yield admin
    admin.close()


@pytest.fixture(scope="module")
def _pg_module_db(pg_admin: PgAdmin, pg_template: str) -> Iterator[str]:
    """This test module's PostgreSQL database, cloned from the migrated template."""
    name = pg_admin.clone(pg_template)
    yield name
    pg_admin.drop(name)


@pytest.fixture
def pg_url(postgres: PostgresServer, pg_admin: PgAdmin, _pg_module_db: str) -> Iterator[str]:
    """A PostgreSQL database migrated to head, empty for this test.

    The module's database, every table emptied after each test (``TRUNCATE``): measured
    faster than cloning a database per test, and as clean (the migrations seed no rows).
    """
    yield postgres.url(_pg_module_db)
    pg_admin.truncate(_pg_module_db)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The run's Redis, emptied for this test (``FLUSHDB``)."""
    flush_redis(redis_server.url)
    return redis_server.url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The SQL backend under test."""
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for ``backend``: SQLite (sessions in its file), or PostgreSQL + Redis."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'visiona.db'}"
        migrate.upgrade(url)
        return make_settings(database_url=url, data_dir=tmp_path, redis_url=None)
    pg = request.getfixturevalue("pg_url")
    redis = request.getfixturevalue("redis_url")
    return make_settings(database_url=pg, data_dir=tmp_path, redis_url=redis)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The application with its lifespan running."""
    application = create_app(settings)
    lifespan = LifespanManager(
        application, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
    )
    async with lifespan:
        yield application


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveServer]:
    """The application in uvicorn on 127.0.0.1 (port 0), in the test's event loop."""
    async with serve_app(create_app(settings), settings) as server:
        yield server


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the live server."""
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client bound to the application in process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def unique_email() -> str:
    """An email no other test uses."""
    return f"user-{uuid.uuid4().hex[:12]}@example.com"
