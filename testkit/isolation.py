"""Per-test isolation on the throwaway servers: a PostgreSQL database, a clean Redis.

The fixtures run synchronously; the administrative PostgreSQL connections live on an
event loop of their own in a background thread (one connection per database, kept
for the run), so isolating a test costs a statement, not a ``psql`` process.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg
from redis import Redis

from testkit.servers import PostgresServer

T = TypeVar("T")


class PgAdmin:
    """Administrative statements on a :class:`PostgresServer`, from synchronous code."""

    def __init__(self, server: PostgresServer) -> None:
        """Start the background loop; connections open on first use."""
        self._server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._conns: dict[str, asyncpg.Connection] = {}
        self._tables: dict[str, str] = {}

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)

    async def _conn(self, dbname: str) -> asyncpg.Connection:
        conn = self._conns.get(dbname)
        if conn is None:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=self._server.port, user="postgres", database=dbname
            )
            self._conns[dbname] = conn
        return conn

    async def _execute(self, sql: str, dbname: str) -> str:
        status: str = await (await self._conn(dbname)).execute(sql)
        return status

    async def _close(self, dbname: str) -> None:
        conn = self._conns.pop(dbname, None)
        if conn is not None:
            await conn.close()

    def clone(self, template: str) -> str:
        """A new database copied from ``template``; its name.

        ``FILE_COPY`` copies the template's files at once: for a small template it is
        faster than PostgreSQL 15's default (``WAL_LOG``, block by block through the WAL).
        The template must have no open session (PostgreSQL refuses to copy it then).
        """
        name = f"visiona_{uuid.uuid4().hex[:12]}"
        self._run(
            self._execute(
                f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY', "postgres"
            )
        )
        return name

    def drop(self, name: str) -> None:
        """Drop database ``name``, ending any session still on it."""
        self._run(self._close(name))
        self._run(self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres"))

    def truncate(self, name: str) -> None:
        """Empty every table of database ``name`` but Alembic's version table."""

        async def truncate() -> None:
            conn = await self._conn(name)
            tables = self._tables.get(name)
            if tables is None:
                tables = await conn.fetchval(
                    "SELECT string_agg(format('%I', tablename), ', ') FROM pg_tables "
                    "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
                self._tables[name] = tables
            # A session the test left behind (a server still stopping) must not hold a
            # lock the truncation waits for.
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await conn.execute(f"TRUNCATE {tables} CASCADE")

        self._run(truncate())

    def close(self) -> None:
        """Close every connection and stop the loop."""
        for name in list(self._conns):
            self._run(self._close(name))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def flush_redis(url: str) -> None:
    """Empty the Redis database of ``url`` (``FLUSHDB``)."""
    client = Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
