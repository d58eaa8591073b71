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
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
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


class Database:
    """The engine plus the unit-of-work entry point used at the edges."""

    def __init__(self, engine: AsyncEngine, target: str) -> None:
        """Wrap ``engine``; ``target`` is its credential-free name for logs."""
        self.engine = engine
        self.target = target
        # The same pool; connections checked out through it run in autocommit.
        self._reader = engine.execution_options(isolation_level=_AUTOCOMMIT)

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
        """Run ``SELECT 1`` within ``within`` seconds; raise on failure."""
        async with asyncio.timeout(within), self.reading() as conn:
            await conn.execute(text("SELECT 1"))

    def pool_in_use(self) -> int:
        """Connections currently checked out of the pool."""
        pool = self.engine.pool
        checkedout = getattr(pool, "checkedout", None)
        return int(checkedout()) if callable(checkedout) else 0

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


async def _close_quietly(conn: AsyncConnection) -> None:
    try:
        await conn.close()
    except (sa_exc.SQLAlchemyError, OSError) as err:
        _LOGGER.debug("closing a broken connection failed: %s", type(err).__name__)
