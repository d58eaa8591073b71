"""A value the database refuses is 422 ``invalid_value``, never a 500 (driver-error mapping).

The edge refuses such input first (:mod:`visiona.kit.text`, field bounds); this is the
net under it. SQLite refuses none of these values (it stores NUL, ignores lengths and
casts loosely), so the driver errors only exist on PostgreSQL: the first tests run
there, against real statements. The last test runs on both: ordinary non-ASCII text
is stored and read back unchanged (the mapping does not fire on good input).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Integer, SmallInteger, bindparam, insert, select, text

from tests.support.settings import make_settings
from visiona.kit.database import Database
from visiona.kit.errors import InvalidValueError
from visiona.kit.schema import users
from visiona.kit.settings import Settings


@pytest.fixture
async def pg_db(pg_url: str) -> AsyncIterator[Database]:
    settings = make_settings(database_url=pg_url, redis_url=None)
    database = Database(settings.build_engine(), settings.database_target)
    yield database
    await database.dispose()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.build_engine(), settings.database_target)
    yield database
    await database.dispose()


def _user(email: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"id": uuid.uuid4(), "email": email, "name": "n", "created_at": now, "updated_at": now}


async def test_nul_in_text_is_invalid_value_on_postgres(pg_db: Database) -> None:
    # CharacterNotInRepertoireError (SQLSTATE 22021), raised by the server.
    with pytest.raises(InvalidValueError):
        async with pg_db.transaction() as conn:
            await conn.execute(insert(users).values(**_user(f"a\x00{uuid.uuid4().hex}@x.io")))


async def test_invalid_text_representation_is_invalid_value_on_postgres(pg_db: Database) -> None:
    # SQLSTATE 22P02.
    with pytest.raises(InvalidValueError):
        async with pg_db.transaction() as conn:
            await conn.execute(text("SELECT CAST(CAST(:v AS text) AS uuid)"), {"v": "not-a-uuid"})


async def test_string_too_long_is_invalid_value_on_postgres(pg_db: Database) -> None:
    # StringDataRightTruncationError (SQLSTATE 22001).
    async def insert_too_long() -> None:
        async with pg_db.transaction() as conn:
            await conn.execute(text("CREATE TEMPORARY TABLE short_text (v varchar(2))"))
            await conn.execute(text("INSERT INTO short_text (v) VALUES (:v)"), {"v": "abc"})

    with pytest.raises(InvalidValueError):
        await insert_too_long()


@pytest.mark.parametrize(
    ("sql", "kind", "value"),
    [
        ("SELECT :v", Integer, "not a number"),  # asyncpg's own argument check
        ("SELECT :v", SmallInteger, 1 << 40),  # out of range for int2
    ],
    ids=["wrong-type", "out-of-range"],
)
async def test_argument_the_driver_cannot_encode_is_invalid_value_on_postgres(
    pg_db: Database, sql: str, kind: Any, value: object
) -> None:
    statement = text(sql).bindparams(bindparam("v", type_=kind))
    with pytest.raises(InvalidValueError):
        async with pg_db.transaction() as conn:
            await conn.execute(statement, {"v": value})


async def test_invalid_value_leaves_the_pool_usable(pg_db: Database) -> None:
    with pytest.raises(InvalidValueError):
        async with pg_db.transaction() as conn:
            await conn.execute(insert(users).values(**_user("nul\x00@x.io")))
    async with pg_db.transaction() as conn:
        assert (await conn.execute(select(1))).scalar_one() == 1


async def test_ordinary_values_are_stored_on_both_databases(db: Database) -> None:
    email = f"\u00e9l\u00e8ve-{uuid.uuid4().hex}@example.com"
    async with db.transaction() as conn:
        await conn.execute(insert(users).values(**_user(email)))
    async with db.transaction() as conn:
        found = await conn.execute(select(users.c.email).where(users.c.email == email))
        assert found.scalar_one() == email
