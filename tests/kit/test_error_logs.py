"""A failing request logs the exception type, the request id and the route: never SQL
parameters (an email, a password hash) nor the driver's text, on both databases.

The failure is real: a trigger in a database of the test's own makes every insert
into ``users`` fail with an error the mapping does not know (so it is a 500).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from testkit.servers import PostgresServer
from tests.support.api import PASSWORD
from tests.support.settings import LIFESPAN_TIMEOUT, make_settings
from visiona.app import create_app
from visiona.kit import migrate
from visiona.kit.logs import configure_logging
from visiona.kit.settings import Settings

_PG_TRIGGER = [
    """CREATE FUNCTION refuse_users() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'users are refused today'; END $$""",
    """CREATE TRIGGER refuse_users BEFORE INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION refuse_users()""",
]
_SQLITE_TRIGGER = """CREATE TRIGGER refuse_users BEFORE INSERT ON users
    BEGIN SELECT RAISE(ABORT, 'users are refused today'); END;"""


@pytest.fixture
def failing_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """A migrated database of this test's own in which inserting a user fails."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'refusing.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database(f"visiona_refusing_{uuid.uuid4().hex[:8]}")
        migrate.upgrade(url)
        for statement in _PG_TRIGGER:
            postgres.psql(statement, dbname=url.rsplit("/", 1)[1])
        return make_settings(database_url=url, data_dir=tmp_path, redis_url=None)
    migrate.upgrade(url)
    with contextlib.closing(sqlite3.connect(tmp_path / "refusing.db")) as conn:
        conn.executescript(_SQLITE_TRIGGER)
    return make_settings(database_url=url, data_dir=tmp_path, redis_url=None)


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The service's own JSON log handler, as `visiona serve` installs it, on a buffer."""
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("INFO", "json")
    yield buffer
    for handler in list(root.handlers):
        if getattr(handler, "_visiona", False):
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
async def failing_client(failing_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(failing_settings)
    async with LifespanManager(
        application, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
    ):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def test_unmapped_database_error_logs_no_parameters(
    failing_client: httpx.AsyncClient, json_logs: io.StringIO
) -> None:
    email = f"secret-{uuid.uuid4().hex[:10]}@example.com"
    response = await failing_client.post(
        "/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "name": "Private Name"},
        headers={"X-Request-ID": "req-logs-1"},
    )
    assert response.status_code == 500, response.text
    assert response.json()["error"]["code"] == "internal_error"
    assert email not in response.text
    logged = json_logs.getvalue()
    for secret in (email, "Private Name", PASSWORD, "$argon2", "users are refused", "INSERT"):
        assert secret not in logged, f"{secret!r} reached the log:\n{logged}"
    errors = [json.loads(line) for line in logged.splitlines() if '"level": "ERROR"' in line]
    assert len(errors) == 1, logged
    assert "unmapped database error" in errors[0]["message"]
    assert "POST /api/v1/auth/register" in errors[0]["message"]
    assert errors[0]["request_id"] == "req-logs-1"
    assert "exc" not in errors[0]
