"""Migrations: up → down → up round trip, one-step down, status, and no drift from schema.py."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from testkit.servers import PostgresServer
from visiona.kit import migrate
from visiona.kit.schema import metadata

TABLES = {
    "organizations",
    "memberships",
    "invitations",
    "api_keys",
    "users",
    "models",
    "devices",
    "device_tags",
    "pairing_tokens",
    "session_tokens",
    "deployments",
    "audit_events",
    "web_sessions",
    "enrollment_keys",
    "rollouts",
    "rollout_devices",
    "webhook_endpoints",
    "webhook_subscriptions",
    "webhook_deliveries",
}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A brand-new empty database URL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"mig_{uuid.uuid4().hex[:10]}")


def _run(url: str, fn: Any) -> Any:
    async def go() -> Any:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


def test_up_down_up_round_trips(empty_db: str) -> None:
    migrate.upgrade(empty_db)
    assert _run(empty_db, _tables) == TABLES
    migrate.downgrade(empty_db, "base")
    assert _run(empty_db, _tables) == set()
    migrate.upgrade(empty_db)
    assert _run(empty_db, _tables) == TABLES


def test_down_reverts_one_step_by_default(empty_db: str) -> None:
    migrate.upgrade(empty_db)
    head = migrate.head_revision()
    migrate.downgrade(empty_db)
    status = _run(empty_db, migrate.status_from_connection)
    assert status.current != head
    assert status.pending[-1] == head


def test_status_lists_pending_until_upgraded(empty_db: str) -> None:
    before = _run(empty_db, migrate.status_from_connection)
    assert before.current is None
    assert before.pending
    assert before.pending[-1] == migrate.head_revision()
    migrate.upgrade(empty_db)
    after = _run(empty_db, migrate.status_from_connection)
    assert after.up_to_date
    assert after.current == after.head


@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning")
@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_migrated_schema_matches_declared_tables(empty_db: str) -> None:
    """No drift; the expression index SQLite cannot reflect is checked by name instead."""
    migrate.upgrade(empty_db)

    def index_names(conn: Connection) -> set[str]:
        found: set[str] = set()
        for table in TABLES:
            found |= {str(ix["name"]) for ix in inspect(conn).get_indexes(table)}
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='index'")
            found |= {str(row[0]) for row in rows}
        return found

    declared = {str(ix.name) for table in metadata.tables.values() for ix in table.indexes}
    assert declared <= _run(empty_db, index_names)

    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    assert _run(empty_db, diff) == []


def test_partial_unique_index_lets_a_deleted_serial_come_back(empty_db: str) -> None:
    """The live-rows-only unique index is really partial on both databases."""
    migrate.upgrade(empty_db)

    def exercise(conn: Connection) -> int:
        from sqlalchemy import func, insert, select, update  # noqa: PLC0415 - local to the check

        from visiona.kit.schema import devices, organizations, users  # noqa: PLC0415

        owner = uuid.uuid4()
        org = uuid.uuid4()
        conn.execute(insert(users).values(id=owner, email=f"{owner}@example.com", name="x"))
        conn.execute(insert(organizations).values(id=org, name="x", personal=True))
        first = uuid.uuid4()
        conn.execute(
            insert(devices).values(
                id=first, owner_user_id=owner, org_id=org, name="a", serial_number="SN"
            )
        )
        conn.execute(update(devices).where(devices.c.id == first).values(deleted_at=func.now()))
        conn.execute(
            insert(devices).values(
                id=uuid.uuid4(), owner_user_id=owner, org_id=org, name="b", serial_number="SN"
            )
        )
        conn.commit()
        return int(conn.execute(select(func.count()).select_from(devices)).scalar_one())

    assert _run(empty_db, exercise) == 2
