"""The SQL layer: engine construction, the unit of work, and driver-error mapping.

One SQLAlchemy Core implementation serves SQLite (aiosqlite) and PostgreSQL
(asyncpg). A unit of work is opened at the edge (a request or a command) with
:meth:`Database.transaction` (writes: one transaction, committed at the end) or
:meth:`Database.reading` (reads: autocommit, no BEGIN/COMMIT, so a simple read is one
PostgreSQL round trip and never takes SQLite's write lock); repositories receive the
connection and never commit. Driver errors are mapped to :mod:`visiona.kit.errors`
here, once.

Pooled connections are not pinged before use (a ping is a round trip per request).
Instead a connection the driver already knows is closed (the server terminated it,
e.g. ``pg_terminate_backend`` or a restart) is discarded at checkout and replaced
transparently; one that dies unnoticed fails its first statement, which maps to 503.

Hot reads (:mod:`visiona.kit.hotread`) bypass SQLAlchemy's per-call machinery: they run
on a :class:`DriverLane`, a few driver connections (asyncpg / aiosqlite) the Database
owns beside the pool. The lane takes each connection from the pool once and detaches
it, so it is opened and set up exactly like a pooled one (connect arguments, codecs,
PRAGMAs), and then lends it without SQLAlchemy's checkout, events or reset.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from visiona.kit.errors import (
    AppError,
    ConflictError,
    DatabaseUnavailableError,
    InvalidValueError,
)

if TYPE_CHECKING:
    from visiona.kit.settings import Settings

_LOGGER = logging.getLogger(__name__)

# PostgreSQL SQLSTATE codes and classes we map.
_PG_UNIQUE = "23505"
_PG_FOREIGN_KEY = "23503"
_PG_UNAVAILABLE_CLASSES = ("08", "57P", "53")  # connection, operator intervention, resources
_AUTOCOMMIT = "AUTOCOMMIT"
_PG_DATA_EXCEPTION = "22"  # bad text, too long, invalid text representation, out of range
_SQLITE_CONFLICTS = {
    "SQLITE_CONSTRAINT_UNIQUE",
    "SQLITE_CONSTRAINT_PRIMARYKEY",
    "SQLITE_CONSTRAINT_FOREIGNKEY",
}


def create_engine_for(settings: Settings) -> AsyncEngine:
    """Build the async engine for ``settings`` with explicit pool and timeouts."""
    url = settings.database
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(settings)
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pool_pre_ping=False,  # see the module docstring: checked at checkout instead
        hide_parameters=True,  # statement parameters (emails, hashes) never reach a log
        connect_args={
            "timeout": settings.db_connect_timeout,
            "command_timeout": settings.db_command_timeout,
            "server_settings": {"application_name": "visiona"},
        },
    )
    event.listen(engine.sync_engine, "checkout", _discard_closed)
    return engine


def _discard_closed(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled asyncpg connection that the server has already closed.

    asyncpg notices the server's goodbye (an error message, then EOF) while the
    connection idles in the pool; ``is_closed()`` reads that flag without a round
    trip. Raising ``DisconnectionError`` makes the pool open a fresh connection.
    """
    inner = getattr(dbapi_conn, "_connection", None)
    is_closed = getattr(inner, "is_closed", None)
    if callable(is_closed) and is_closed():
        _LOGGER.info("discarding a pooled database connection the server closed")
        raise sa_exc.DisconnectionError


def _sqlite_engine(settings: Settings) -> AsyncEngine:
    url = settings.database
    memory = url.database in (None, "", ":memory:")
    if not memory and url.database is not None:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {
        "connect_args": {"timeout": settings.sqlite_busy_timeout_ms / 1000},
        "hide_parameters": True,  # statement parameters never reach a log
    }
    if memory:
        kwargs["poolclass"] = StaticPool
    else:
        # Every transaction takes SQLite's write lock (BEGIN IMMEDIATE, below), so more
        # connections only add waiters polling in SQLite's busy handler, which sleeps
        # in steps of up to 100 ms. One connection makes callers queue fairly in the
        # pool instead (bounded by the pool timeout → 503).
        kwargs.update(pool_size=1, max_overflow=0, pool_timeout=settings.db_pool_timeout)
    engine = create_async_engine(url, **kwargs)
    busy_ms = settings.sqlite_busy_timeout_ms

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Reads (Database.reading) run in autocommit: no BEGIN, no lock beyond the
        # statement's own shared one, so they never queue behind the write lock.
        if conn.get_execution_options().get("isolation_level") == _AUTOCOMMIT:
            return
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads and
        # then writes fails at once with SQLITE_BUSY when another writer got in between
        # (the busy timeout cannot help there); this one waits its turn instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def map_db_error(err: BaseException) -> AppError | None:  # noqa: PLR0911 - a flat decision table
    """Translate a driver or pool error into an :class:`AppError`, or None if unknown.

    Unique and foreign-key violations become 409 ``conflict``; a value the database
    refuses (PostgreSQL's data exceptions, class 22, asyncpg's own argument check)
    becomes 422 ``invalid_value``; refused connections,
    pool timeouts and a server that went away become 503 ``database_unavailable``.
    The driver's text is never carried over.
    """
    if isinstance(err, AppError):
        return err
    if isinstance(err, sa_exc.TimeoutError):  # pool exhausted
        return DatabaseUnavailableError()
    if isinstance(err, sa_exc.DBAPIError):
        orig = err.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if sqlstate in (_PG_UNIQUE, _PG_FOREIGN_KEY):
            return ConflictError()
        inner = getattr(orig, "__cause__", None) or orig
        if (
            isinstance(err, sa_exc.DataError)
            or isinstance(inner, asyncpg.DataError)
            or (isinstance(sqlstate, str) and sqlstate.startswith(_PG_DATA_EXCEPTION))
        ):
            return InvalidValueError()
        if isinstance(inner, sqlite3.IntegrityError) or isinstance(orig, sqlite3.IntegrityError):
            name = getattr(inner, "sqlite_errorname", "")
            if name in _SQLITE_CONFLICTS or "UNIQUE" in str(inner) or "FOREIGN KEY" in str(inner):
                return ConflictError()
            return None
        if err.connection_invalidated:
            return DatabaseUnavailableError()
        if isinstance(sqlstate, str) and sqlstate.startswith(_PG_UNAVAILABLE_CLASSES):
            return DatabaseUnavailableError()
        if isinstance(err, sa_exc.OperationalError | sa_exc.InterfaceError):
            return DatabaseUnavailableError()
        if isinstance(inner, OSError | asyncio.TimeoutError):
            return DatabaseUnavailableError()
        return None
    if isinstance(err, OSError | asyncio.TimeoutError):
        return DatabaseUnavailableError()
    return None


#: Driver connections of the hot-read lane unless told otherwise (per process).
DEFAULT_HOT_CONNECTIONS = 4


class Database:
    """The engine plus the unit-of-work entry point used at the edges."""

    def __init__(
        self,
        engine: AsyncEngine,
        target: str,
        *,
        hot_connections: int = DEFAULT_HOT_CONNECTIONS,
        recycle: float = 1800,
    ) -> None:
        """Wrap ``engine``; ``target`` is its credential-free name for logs.

        ``hot_connections`` driver connections (beside the pool) serve hot reads; 0, an
        in-memory SQLite database (one shared connection) or another driver runs them
        through the pool instead. ``recycle``: seconds before a lane connection is renewed.
        """
        self.engine = engine
        self.target = target
        # The same pool; connections checked out through it run in autocommit.
        self._reader = engine.execution_options(isolation_level=_AUTOCOMMIT)
        #: The driver connections hot reads run on (None: they run through the pool).
        self.lane: DriverLane | None = DriverLane.for_engine(
            engine, target, size=hot_connections, recycle=recycle
        )

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """Open one unit of work: commit when the block ends, roll back on error."""
        conn = await self._connect(self.engine)
        try:
            async with conn.begin():
                yield conn
        except sa_exc.SQLAlchemyError as err:
            mapped = self._mapped(err)
            if mapped is None:
                raise
            raise mapped from err
        finally:
            await _close_quietly(conn)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """Open a read: autocommit, every statement its own snapshot, nothing to commit.

        For reads that a single statement answers (or whose statements need not see one
        snapshot); anything that writes uses :meth:`transaction`.
        """
        conn = await self._connect(self._reader)
        try:
            yield conn
        except sa_exc.SQLAlchemyError as err:
            mapped = self._mapped(err)
            if mapped is None:
                raise
            raise mapped from err
        finally:
            await _close_quietly(conn)

    async def _connect(self, engine: AsyncEngine) -> AsyncConnection:
        try:
            return await engine.connect()
        except Exception as err:
            mapped = map_db_error(err)
            if mapped is None:
                raise
            _LOGGER.warning("database %s unavailable: %s", self.target, type(err).__name__)
            raise mapped from err

    def _mapped(self, err: sa_exc.SQLAlchemyError) -> AppError | None:
        mapped = map_db_error(err)
        if isinstance(mapped, DatabaseUnavailableError):
            _LOGGER.warning("database %s unavailable: %s", self.target, type(err).__name__)
        return mapped

    async def ping(self, within: float = 1.0) -> None:
        """Run ``SELECT 1`` within ``within`` seconds (on the hot-read lane); raise on failure."""
        async with asyncio.timeout(within):
            if self.lane is None:
                async with self.reading() as conn:
                    await conn.execute(text("SELECT 1"))
            else:
                await self.lane.fetch(_PING_KEY, "SELECT 1", (), first=True)

    def pool_in_use(self) -> int:
        """Connections currently checked out of the pool."""
        pool = self.engine.pool
        checkedout = getattr(pool, "checkedout", None)
        return int(checkedout()) if callable(checkedout) else 0

    async def dispose(self) -> None:
        """Close every pooled connection and the hot-read lane's."""
        if self.lane is not None:
            await self.lane.close()
        await self.engine.dispose()


async def _close_quietly(conn: AsyncConnection) -> None:
    try:
        await conn.close()
    except (sa_exc.SQLAlchemyError, OSError) as err:
        _LOGGER.debug("closing a broken connection failed: %s", type(err).__name__)


# -- the hot-read lane -------------------------------------------------------------

_PING_KEY = -1  # the prepared-statement key of Database.ping's SELECT 1
#: SQLSTATE classes of an error after which the session is gone: connection exception,
#: operator intervention (admin shutdown, crash shutdown, cannot connect now).
_PG_LOST_CLASSES = ("08", "57P")


class LaneConnection:
    """One driver connection of a :class:`DriverLane` and its prepared statements."""

    __slots__ = ("driver", "opened_at", "prepared")

    def __init__(self, driver: Any, opened_at: float) -> None:
        """Hold ``driver`` (an ``asyncpg.Connection`` or an ``aiosqlite.Connection``)."""
        self.driver = driver
        self.opened_at = opened_at
        #: asyncpg prepared statements by the hot read's key (PostgreSQL only)
        self.prepared: dict[int, Any] = {}


class DriverLane:
    """A few driver connections for hot reads, lent without SQLAlchemy's machinery.

    Each connection is taken from the engine's pool once (so it is opened and set up
    exactly like a pooled one) and detached: the pool forgets it and opens another
    when it needs one, so the lane adds up to ``size`` connections to the server.
    Statements run in autocommit: on PostgreSQL as asyncpg prepared statements cached
    per connection, on SQLite outside any transaction (no write lock, as
    :meth:`Database.reading`).

    A connection the server closed is dropped when it is lent; one that dies during a
    statement is dropped and the statement retried once on a fresh connection (reads
    only: retrying is harmless); anything still failing maps to 503
    ``database_unavailable`` like the pool's errors, never a driver error.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        target: str,
        *,
        size: int,
        timeout: float,
        recycle: float,
    ) -> None:
        """A lane of up to ``size`` connections from ``engine``'s pool (see :meth:`for_engine`)."""
        self.engine = engine
        self.dialect = engine.dialect
        self.target = target
        self._postgres = engine.dialect.name == "postgresql"
        self._size = size
        self._timeout = timeout
        self._recycle = recycle
        self._idle: list[LaneConnection] = []
        self._lent: set[LaneConnection] = set()
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    @classmethod
    def for_engine(
        cls, engine: AsyncEngine, target: str, *, size: int, recycle: float
    ) -> DriverLane | None:
        """The lane for ``engine``, or None when hot reads must go through the pool.

        None for ``size`` 0, for a driver other than asyncpg and aiosqlite, and for a
        pool that shares one connection (in-memory SQLite: a detached connection
        would take the database with it).
        """
        pool = engine.sync_engine.pool
        if size <= 0 or engine.dialect.driver not in ("asyncpg", "aiosqlite"):
            return None
        if isinstance(pool, StaticPool):
            return None
        timeout = getattr(pool, "timeout", None)
        wait = float(timeout()) if callable(timeout) else 5.0
        return cls(engine, target, size=size, timeout=wait, recycle=recycle)

    def in_use(self) -> int:
        """Lane connections lent right now."""
        return len(self._lent)

    async def fetch(self, key: int, sql: str, args: Sequence[Any], *, first: bool) -> list[Any]:
        """Run ``sql`` with positional ``args``; its rows as the driver returns them.

        ``key`` names the statement (its prepared form is cached per connection under
        it); ``first``: only the first row is wanted (at most one is returned).
        """
        try:
            return await self._attempt(key, sql, args, first=first)
        except Exception as err:
            if not self._lost(err):
                raise self._mapped(err) from err
            _LOGGER.info("hot read: a database connection was lost; retrying once")
        try:
            return await self._attempt(key, sql, args, first=first)
        except Exception as err:
            raise self._mapped(err) from err

    async def _attempt(self, key: int, sql: str, args: Sequence[Any], *, first: bool) -> list[Any]:
        conn = await self._acquire()
        try:
            if self._postgres:
                rows = await self._run_postgres(conn, key, sql, args, first=first)
            else:
                rows = list(await conn.driver.execute_fetchall(sql, args))
        except BaseException as err:
            self._release(conn, broken=not self._harmless(err))
            raise
        self._release(conn, broken=False)
        return rows[:1] if first else rows

    async def _run_postgres(
        self, conn: LaneConnection, key: int, sql: str, args: Sequence[Any], *, first: bool
    ) -> list[Any]:
        prepared = conn.prepared.get(key)
        if prepared is None:
            prepared = conn.prepared[key] = await conn.driver.prepare(sql)
        try:
            if first:
                row = await prepared.fetchrow(*args)
                return [] if row is None else [row]
            return list(await prepared.fetch(*args))
        except (asyncpg.InvalidCachedStatementError, asyncpg.OutdatedSchemaCacheError):
            # the schema changed under the prepared statement (a migration): prepare again
            conn.prepared.clear()
            await conn.driver.reload_schema_state()
            prepared = conn.prepared[key] = await conn.driver.prepare(sql)
            if first:
                row = await prepared.fetchrow(*args)
                return [] if row is None else [row]
            return list(await prepared.fetch(*args))

    async def _acquire(self) -> LaneConnection:
        if self._closed:
            raise DatabaseUnavailableError
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._timeout):
                    await self._slots.acquire()
            except TimeoutError as err:
                _LOGGER.warning("database %s unavailable: lane exhausted", self.target)
                raise DatabaseUnavailableError from err
        else:
            await self._slots.acquire()  # a free slot: returns without suspending
        try:
            conn = self._take_idle() or await self._open()
        except BaseException:
            self._slots.release()
            raise
        self._lent.add(conn)
        return conn

    def _take_idle(self) -> LaneConnection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: its socket is warm
            if self._is_closed(conn):
                _LOGGER.info("discarding a lane database connection the server closed")
            elif 0 <= self._recycle < now - conn.opened_at:
                _LOGGER.debug("renewing a lane database connection (recycle)")
            else:
                return conn
            self._discard(conn)
        return None

    async def _open(self) -> LaneConnection:
        try:
            proxied = await self.engine.raw_connection()
        except Exception as err:
            mapped = map_db_error(err)
            if mapped is None:
                raise
            _LOGGER.warning("database %s unavailable: %s", self.target, type(err).__name__)
            raise mapped from err
        driver = proxied.driver_connection
        proxied.detach()  # ours now: the pool opens another when it needs one
        return LaneConnection(driver, time.monotonic())

    def _release(self, conn: LaneConnection, *, broken: bool) -> None:
        self._lent.discard(conn)
        if broken or self._closed:
            self._discard(conn)
        else:
            self._idle.append(conn)
        self._slots.release()

    def _is_closed(self, conn: LaneConnection) -> bool:
        if self._postgres:
            return bool(conn.driver.is_closed())
        return not getattr(conn.driver, "_running", True)

    def _discard(self, conn: LaneConnection) -> None:
        """Drop ``conn`` without waiting (asyncpg: terminate; aiosqlite: stop its thread)."""
        if self._postgres:
            conn.driver.terminate()
        else:
            conn.driver.stop()

    def _harmless(self, err: BaseException) -> bool:
        """Whether the connection is fine after ``err`` (a statement's own error)."""
        if self._postgres:
            return isinstance(err, asyncpg.PostgresError) and not self._lost(err)
        return isinstance(err, sqlite3.OperationalError | sqlite3.IntegrityError)

    def _lost(self, err: BaseException) -> bool:
        """Whether ``err`` means the connection is gone (a retry on a fresh one may work)."""
        if self._postgres:
            sqlstate = getattr(err, "sqlstate", None)
            if isinstance(sqlstate, str) and sqlstate.startswith(_PG_LOST_CLASSES):
                return True
            return isinstance(err, asyncpg.InterfaceError | ConnectionError)
        # aiosqlite's ValueError of a closed connection; sqlite3's ProgrammingError of one
        return isinstance(err, ValueError | sqlite3.ProgrammingError)

    def _mapped(self, err: Exception) -> Exception:
        """``err`` as the API sees it: 503 / 409 / 422 like :func:`map_db_error`, or itself."""
        if isinstance(err, AppError):
            return err
        mapped = map_driver_error(err)
        if mapped is None:
            return err
        if isinstance(mapped, DatabaseUnavailableError):
            _LOGGER.warning("database %s unavailable: %s", self.target, type(err).__name__)
        return mapped

    async def close(self) -> None:
        """Close every lane connection (lent ones when they come back)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await conn.driver.close()
            except (OSError, asyncpg.InterfaceError, ValueError, sqlite3.Error) as err:
                _LOGGER.debug("closing a lane connection failed: %s", type(err).__name__)
                self._discard(conn)


def map_driver_error(err: BaseException) -> AppError | None:  # noqa: PLR0911 - a flat decision table
    """:func:`map_db_error` for an error raised by a driver directly (the hot-read lane).

    Unique and foreign-key violations are 409 ``conflict``; a value the database refuses
    is 422 ``invalid_value``; a lost connection, a timeout, a server going away or busy
    is 503 ``database_unavailable``; anything else is None (a bug: the caller raises it).
    """
    if isinstance(err, AppError):
        return err
    if isinstance(err, asyncpg.PostgresError):
        sqlstate = getattr(err, "sqlstate", None) or ""
        if sqlstate in (_PG_UNIQUE, _PG_FOREIGN_KEY):
            return ConflictError()
        if sqlstate.startswith(_PG_DATA_EXCEPTION):
            return InvalidValueError()
        if sqlstate.startswith(_PG_UNAVAILABLE_CLASSES):
            return DatabaseUnavailableError()
        return None
    if isinstance(err, sqlite3.IntegrityError):
        name = getattr(err, "sqlite_errorname", "")
        return ConflictError() if name in _SQLITE_CONFLICTS else None
    if isinstance(
        err,
        asyncpg.InterfaceError
        | OSError
        | TimeoutError
        | sqlite3.OperationalError
        | sqlite3.ProgrammingError
        | ValueError,
    ):
        return DatabaseUnavailableError()
    return None
