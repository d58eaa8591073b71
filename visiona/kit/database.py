"""The SQL layer: engine construction, the unit of work, and driver-error mapping.

One SQLAlchemy Core implementation serves SQLite (aiosqlite) and PostgreSQL
(asyncpg). A unit of work is opened at the edge (a request or a command) with
:meth:`Database.transaction`; repositories receive the connection and never
commit. Driver errors are mapped to :mod:`visiona.kit.errors` here, once.
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
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pool_pre_ping=True,
        hide_parameters=True,  # statement parameters (emails, hashes) never reach a log
        connect_args={
            "timeout": settings.db_connect_timeout,
            "command_timeout": settings.db_command_timeout,
            "server_settings": {"application_name": "visiona"},
        },
    )


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

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """Open one unit of work: commit when the block ends, roll back on error."""
        try:
            conn = await self.engine.connect()
        except Exception as err:
            mapped = map_db_error(err)
            if mapped is None:
                raise
            _LOGGER.warning("database %s unavailable: %s", self.target, type(err).__name__)
            raise mapped from err
        try:
            async with conn.begin():
                yield conn
        except sa_exc.SQLAlchemyError as err:
            mapped = map_db_error(err)
            if mapped is None:
                raise
            if isinstance(mapped, DatabaseUnavailableError):
                _LOGGER.warning("database %s unavailable: %s", self.target, type(err).__name__)
            raise mapped from err
        finally:
            await _close_quietly(conn)

    async def ping(self, within: float = 1.0) -> None:
        """Run ``SELECT 1`` within ``within`` seconds; raise on failure."""
        async with asyncio.timeout(within), self.transaction() as conn:
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
