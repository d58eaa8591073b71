"""Web-session stores: idle and absolute expiry, same semantics in process, in Redis and in SQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import event, select

from testkit.servers import free_port
from tests.support.settings import make_settings
from visiona.auth.repository import insert_user
from visiona.auth.sessions import MemorySessionStore, RedisSessionStore, SqlSessionStore
from visiona.kit import migrate
from visiona.kit.database import Database
from visiona.kit.errors import SessionStoreUnavailableError
from visiona.kit.schema import web_sessions


class FakeClock:
    """A settable clock for the in-process store."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_session_idles_out_without_use() -> None:
    clock = FakeClock()
    store = MemorySessionStore(idle_ttl=10, absolute_ttl=100, clock=clock)
    user = uuid.uuid4()
    await store.create("h", user)
    clock.now += 9
    session = await store.touch("h")
    assert session is not None
    assert session.user_id == user
    clock.now += 9  # refreshed at the last touch, so still alive
    assert await store.touch("h") is not None
    clock.now += 11
    assert await store.touch("h") is None


async def test_memory_session_ends_at_absolute_deadline_despite_use() -> None:
    clock = FakeClock()
    store = MemorySessionStore(idle_ttl=10, absolute_ttl=25, clock=clock)
    await store.create("h", uuid.uuid4())
    for _ in range(2):
        clock.now += 9
        assert await store.touch("h") is not None
    clock.now += 9  # 27 s after creation
    assert await store.touch("h") is None


async def test_memory_session_delete_ends_it() -> None:
    store = MemorySessionStore(idle_ttl=10, absolute_ttl=25)
    await store.create("h", uuid.uuid4())
    await store.delete("h")
    assert await store.touch("h") is None


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_redis_key_ttl_is_the_idle_timeout_and_touch_refreshes_it(
    redis_client: Redis,
) -> None:
    prefix = f"t:{uuid.uuid4().hex}:"
    store = RedisSessionStore(redis_client, idle_ttl=100, absolute_ttl=1000, prefix=prefix)
    user = uuid.uuid4()
    await store.create("h", user)
    assert 98 <= await redis_client.ttl(prefix + "h") <= 100
    await redis_client.expire(prefix + "h", 5)
    session = await store.touch("h")
    assert session is not None
    assert session.user_id == user
    assert await redis_client.ttl(prefix + "h") >= 98


async def test_redis_session_idles_out(redis_client: Redis) -> None:
    store = RedisSessionStore(redis_client, idle_ttl=1, absolute_ttl=100, prefix="t:idle:")
    await store.create("h", uuid.uuid4())
    await asyncio.sleep(1.3)
    assert await store.touch("h") is None


async def test_redis_session_ends_at_absolute_deadline_despite_use(redis_client: Redis) -> None:
    prefix = f"t:{uuid.uuid4().hex}:"
    store = RedisSessionStore(redis_client, idle_ttl=100, absolute_ttl=2, prefix=prefix)
    await store.create("h", uuid.uuid4())
    assert await store.touch("h") is not None
    # the TTL never outlives the deadline
    assert await redis_client.ttl(prefix + "h") <= 2
    await asyncio.sleep(2.2)
    assert await store.touch("h") is None
    assert await redis_client.exists(prefix + "h") == 0


async def test_redis_session_delete_ends_it(redis_client: Redis) -> None:
    store = RedisSessionStore(redis_client, idle_ttl=100, absolute_ttl=1000, prefix="t:del:")
    await store.create("h", uuid.uuid4())
    await store.delete("h")
    assert await store.touch("h") is None


async def test_unreachable_redis_is_session_store_unavailable() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    errors: list[int] = []
    store = RedisSessionStore(
        client, idle_ttl=10, absolute_ttl=100, on_error=lambda: errors.append(1)
    )
    try:
        with pytest.raises(SessionStoreUnavailableError):
            await store.touch("h")
        with pytest.raises(SessionStoreUnavailableError):
            await store.create("h", uuid.uuid4())
        assert len(errors) == 2
    finally:
        await client.aclose()


async def test_redis_touch_reloads_its_script_after_redis_forgot_it(redis_client: Redis) -> None:
    # A restarted (or flushed) Redis answers NOSCRIPT to EVALSHA; the store loads the
    # script once and the session check still succeeds in the same call.
    prefix = f"t:{uuid.uuid4().hex}:"
    store = RedisSessionStore(redis_client, idle_ttl=100, absolute_ttl=1000, prefix=prefix)
    user = uuid.uuid4()
    await store.create("h", user)
    await redis_client.script_flush()
    session = await store.touch("h")
    assert session is not None
    assert session.user_id == user
    again = await store.touch("h")
    assert again is not None


# -- the SQL store (no Redis configured): SQLite and PostgreSQL -----------------------


class FakeUtc:
    """A settable aware-UTC clock for the SQL store."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgres"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database migrated to head (schema by the migrations) on each SQL backend."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
        migrate.upgrade(url)
        return url
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def sql_db(sql_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    """The :class:`Database` of ``sql_url``, built like the server's."""
    settings = make_settings(database_url=sql_url, data_dir=tmp_path)
    database = Database(settings.build_engine(), settings.database_target)
    yield database
    await database.dispose()


@pytest.fixture
async def user_id(sql_db: Database) -> uuid.UUID:
    """A user the sessions belong to (the table's foreign key)."""
    new_id = uuid.uuid4()
    async with sql_db.transaction() as conn:
        await insert_user(
            conn,
            user_id=new_id,
            email=f"s-{new_id.hex[:10]}@example.com",
            name="S",
            password_hash=None,
            now=datetime.now(UTC),
        )
    return new_id


async def _row(db: Database, token_hash: str) -> Any:
    async with db.reading() as conn:
        query = select(web_sessions).where(web_sessions.c.token_hash == token_hash)
        return (await conn.execute(query)).one_or_none()


def _hash() -> str:
    return uuid.uuid4().hex * 2  # 64 hex digits, like a sha256


async def test_sql_session_idles_out_without_use(sql_db: Database, user_id: uuid.UUID) -> None:
    clock = FakeUtc()
    store = SqlSessionStore(sql_db, idle_ttl=100, absolute_ttl=1000, clock=clock)
    token = _hash()
    created = await store.create(token, user_id)
    assert created.expires_at == (clock.now + timedelta(seconds=1000)).timestamp()
    clock.advance(90)
    session = await store.touch(token)
    assert session is not None
    assert session.user_id == user_id
    clock.advance(90)  # 180 s after creation: alive, refreshed by the last use
    assert await store.touch(token) is not None
    clock.advance(101)
    assert await store.touch(token) is None


async def test_sql_session_ends_at_absolute_deadline_despite_use(
    sql_db: Database, user_id: uuid.UUID
) -> None:
    clock = FakeUtc()
    store = SqlSessionStore(sql_db, idle_ttl=100, absolute_ttl=250, clock=clock)
    token = _hash()
    await store.create(token, user_id)
    for _ in range(2):
        clock.advance(90)
        assert await store.touch(token) is not None
    clock.advance(90)  # 270 s after creation, 90 s after the last use
    assert await store.touch(token) is None


async def test_sql_touch_writes_the_idle_deadline_back_at_most_once_per_interval(
    sql_db: Database, user_id: uuid.UUID
) -> None:
    clock = FakeUtc()
    store = SqlSessionStore(sql_db, idle_ttl=3600, absolute_ttl=3700, clock=clock, refresh_after=60)
    token = _hash()
    start = clock.now
    await store.create(token, user_id)
    clock.advance(59)
    assert await store.touch(token) is not None
    row = await _row(sql_db, token)
    assert row.idle_expires_at == start + timedelta(seconds=3600)  # not written: too soon
    clock.advance(1)
    assert await store.touch(token) is not None
    row = await _row(sql_db, token)
    assert row.idle_expires_at == start + timedelta(seconds=3660)
    # 40 s later: less than the interval, but the last step up to the absolute deadline
    # (which the idle deadline never passes) is written so that use keeps it to the end
    clock.advance(40)
    assert await store.touch(token) is not None
    row = await _row(sql_db, token)
    assert row.idle_expires_at == row.expires_at == start + timedelta(seconds=3700)
    clock.advance(3599)
    assert await store.touch(token) is not None
    clock.advance(1)
    assert await store.touch(token) is None


async def test_sql_refresh_interval_is_capped_by_a_short_idle_timeout(
    sql_db: Database, user_id: uuid.UUID
) -> None:
    # idle 20 s: the write-back interval is 2 s (a tenth), not the 60 s default, so a
    # session in steady use every 15 s never idles out.
    clock = FakeUtc()
    store = SqlSessionStore(sql_db, idle_ttl=20, absolute_ttl=1000, clock=clock)
    token = _hash()
    await store.create(token, user_id)
    for _ in range(10):
        clock.advance(15)
        assert await store.touch(token) is not None


async def test_sql_session_delete_ends_it(sql_db: Database, user_id: uuid.UUID) -> None:
    store = SqlSessionStore(sql_db, idle_ttl=100, absolute_ttl=1000)
    token = _hash()
    await store.create(token, user_id)
    await store.delete(token)
    assert await store.touch(token) is None
    assert await _row(sql_db, token) is None


async def test_sql_sweep_deletes_dead_rows_in_bounded_batches_when_due(
    sql_db: Database, user_id: uuid.UUID
) -> None:
    clock = FakeUtc()
    store = SqlSessionStore(
        sql_db, idle_ttl=100, absolute_ttl=1000, clock=clock, sweep_every=600, sweep_batch=2
    )
    dead = [_hash() for _ in range(4)]
    for token in dead:  # the first create sweeps (nothing is dead yet)
        await store.create(token, user_id)
    clock.advance(200)  # all four idled out
    early = _hash()
    await store.create(early, user_id)  # no sweep: the last was 200 s ago
    assert all([await _row(sql_db, token) is not None for token in dead])
    clock.advance(400)  # 600 s since the last sweep; `early` is dead too now
    alive = _hash()
    await store.create(alive, user_id)
    remaining = [token for token in [*dead, early] if await _row(sql_db, token) is not None]
    assert len(remaining) == 3  # one batch of two went, the longest dead first
    assert early in remaining
    assert await _row(sql_db, alive) is not None
    async with sql_db.transaction() as conn:
        assert await store.sweep(conn) == 2
        assert await store.sweep(conn) == 1
        assert await store.sweep(conn) == 0
    assert await store.touch(alive) is not None


async def test_sql_store_runs_on_the_callers_connection(
    sql_db: Database, user_id: uuid.UUID
) -> None:
    # Inside the caller's transaction: a rollback undoes the create, so the store
    # used that connection and no second one (the SQLite pool has a single one).
    store = SqlSessionStore(sql_db, idle_ttl=100, absolute_ttl=1000)
    token = _hash()

    async with sql_db.engine.connect() as conn:
        transaction = await conn.begin()
        await store.create(token, user_id, conn)
        assert await store.touch(token, conn) is not None
        await transaction.rollback()
    assert await store.touch(token) is None
    async with sql_db.transaction() as conn:
        await store.create(token, user_id, conn)
    async with sql_db.reading() as conn:
        assert await store.touch(token, conn) is not None
    async with sql_db.transaction() as conn:
        await store.delete(token, conn)
    assert await store.touch(token) is None


async def test_sql_store_ping_checks_the_database(sql_db: Database) -> None:
    await SqlSessionStore(sql_db, idle_ttl=100, absolute_ttl=1000).ping()


async def test_sql_store_reads_a_session_in_use_once(sql_db: Database, user_id: uuid.UUID) -> None:
    store = SqlSessionStore(sql_db, idle_ttl=100, absolute_ttl=1000)
    token = _hash()
    async with sql_db.transaction() as conn:
        await store.create(token, user_id, conn)
    selects: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(sql_db.engine.sync_engine, "before_cursor_execute", count)
    try:
        for _ in range(5):
            assert await store.touch(token) is not None
        assert len(selects) == 1  # one process serves this store: the row is remembered
        await store.delete(token)
        assert await store.touch(token) is None
    finally:
        event.remove(sql_db.engine.sync_engine, "before_cursor_execute", count)


async def test_sql_store_forgets_the_oldest_session_beyond_its_cache(
    sql_db: Database, user_id: uuid.UUID
) -> None:
    store = SqlSessionStore(sql_db, idle_ttl=100, absolute_ttl=1000, cache_size=2)
    tokens = [_hash() for _ in range(3)]
    for token in tokens:
        await store.create(token, user_id)
    for token in tokens + tokens:
        assert await store.touch(token) is not None


async def test_sql_store_sees_another_processes_sign_out_within_its_cache_ttl(
    sql_db: Database, user_id: uuid.UUID
) -> None:
    here = SqlSessionStore(sql_db, idle_ttl=100, absolute_ttl=1000, cache_ttl=0.05)
    elsewhere = SqlSessionStore(sql_db, idle_ttl=100, absolute_ttl=1000)
    token = _hash()
    await elsewhere.create(token, user_id)
    assert await here.touch(token) is not None  # remembered here
    await elsewhere.delete(token)
    await asyncio.sleep(0.2)  # past the 0.05 s during which this store trusts its copy
    assert await here.touch(token) is None
