"""The unit of work and the one place where driver errors are mapped, on both databases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from testkit.servers import free_port
from tests.support.settings import make_settings
from visiona.kit.database import Database
from visiona.kit.errors import ConflictError, DatabaseUnavailableError
from visiona.kit.schema import devices, users
from visiona.kit.settings import Settings


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.build_engine(), settings.database_target)
    yield database
    await database.dispose()


def _user(email: str) -> dict[str, object]:
    now = datetime.now(UTC)
    return {"id": uuid.uuid4(), "email": email, "name": "n", "created_at": now, "updated_at": now}


async def test_unique_violation_is_a_conflict(db: Database) -> None:
    email = f"{uuid.uuid4().hex}@example.com"
    async with db.transaction() as conn:
        await conn.execute(insert(users).values(**_user(email)))
    with pytest.raises(ConflictError):
        async with db.transaction() as conn:
            await conn.execute(insert(users).values(**_user(email.upper())))


async def test_foreign_key_violation_is_a_conflict(db: Database) -> None:
    with pytest.raises(ConflictError):
        async with db.transaction() as conn:
            await conn.execute(
                insert(devices).values(
                    id=uuid.uuid4(), owner_user_id=uuid.uuid4(), org_id=uuid.uuid4(), name="orphan"
                )
            )


async def test_failed_unit_of_work_leaves_nothing_behind(db: Database) -> None:
    email = f"{uuid.uuid4().hex}@example.com"

    async def user_then_orphan() -> None:
        async with db.transaction() as conn:
            await conn.execute(insert(users).values(**_user(email)))
            await conn.execute(
                insert(devices).values(
                    id=uuid.uuid4(), owner_user_id=uuid.uuid4(), org_id=uuid.uuid4(), name="orphan"
                )
            )

    with pytest.raises(ConflictError):
        await user_then_orphan()
    async with db.transaction() as conn:
        count = await conn.execute(
            select(func.count()).select_from(users).where(users.c.email == email)
        )
        assert count.scalar_one() == 0


async def test_error_raised_by_caller_rolls_back(db: Database) -> None:
    email = f"{uuid.uuid4().hex}@example.com"

    async def insert_then_fail() -> None:
        async with db.transaction() as conn:
            await conn.execute(insert(users).values(**_user(email)))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await insert_then_fail()
    async with db.transaction() as conn:
        found = await conn.execute(select(users.c.id).where(users.c.email == email))
        assert found.first() is None


async def test_unreachable_postgres_is_database_unavailable() -> None:
    settings = make_settings(
        database_url=f"postgresql://u:secret@127.0.0.1:{free_port()}/nope", db_connect_timeout=1
    )
    db = Database(settings.build_engine(), settings.database_target)
    try:
        with pytest.raises(DatabaseUnavailableError) as info:
            async with db.transaction():
                pass
        assert "secret" not in str(info.value)
    finally:
        await db.dispose()


async def _driver_in_transaction(conn: AsyncConnection) -> bool:
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    if hasattr(raw, "is_in_transaction"):  # asyncpg
        return bool(raw.is_in_transaction())
    return bool(raw.in_transaction)  # aiosqlite → sqlite3


async def test_a_read_opens_no_transaction_on_the_server(db: Database) -> None:
    # No BEGIN/COMMIT around a read: one round trip on PostgreSQL, and on SQLite no
    # write lock (writes take BEGIN IMMEDIATE).
    async with db.reading() as conn:
        assert (await conn.execute(select(func.count()).select_from(users))).scalar_one() >= 0
        assert not await _driver_in_transaction(conn)
    async with db.transaction() as conn:
        await conn.execute(select(func.count()).select_from(users))
        assert await _driver_in_transaction(conn)


async def test_a_read_sees_what_committed_writes_left(db: Database) -> None:
    row = _user(f"{uuid.uuid4().hex}@example.com")
    async with db.transaction() as conn:
        await conn.execute(insert(users).values(**row))
    async with db.reading() as conn:
        found = await conn.execute(select(users.c.email).where(users.c.id == row["id"]))
        assert found.scalar_one() == row["email"]
