"""FastAPI dependencies shared by every feature: the runtime and the unit of work.

The unit-of-work rule, predictable from the route: ``GET`` and ``HEAD`` run as a read
(:meth:`Database.reading`: autocommit, no BEGIN/COMMIT, no SQLite write lock); every
other method runs in one transaction committed before the response is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import HTTPConnection

from visiona.kit.runtime import Runtime

READ_METHODS = frozenset({"GET", "HEAD"})


async def get_runtime(request: Request) -> Runtime:
    """The application's :class:`Runtime` (async: FastAPI runs sync dependencies in a thread)."""
    return runtime_of(request)


def runtime_of(request: HTTPConnection) -> Runtime:
    """The application's :class:`Runtime`, for code that holds the request (or WebSocket)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def unit_of_work(request: Request) -> AsyncIterator[AsyncConnection]:
    """A read for GET/HEAD; otherwise one transaction, committed when the endpoint returns.

    While it is open, :func:`open_connection` hands the same connection to code that
    runs later in the request (the session check): one request never holds two of
    the pool's connections, which on the embedded SQLite pool (one connection) would
    wait for itself until the pool timeout.
    """
    db = runtime_of(request).db
    opened = db.reading() if request.method in READ_METHODS else db.transaction()
    async with opened as conn:
        request.state.unit_of_work = conn
        try:
            yield conn
        finally:
            request.state.unit_of_work = None


def open_connection(request: HTTPConnection) -> AsyncConnection | None:
    """The request's unit-of-work connection if one is open, else None."""
    conn: AsyncConnection | None = getattr(request.state, "unit_of_work", None)
    return conn


# scope="function": the transaction commits before the response is sent, so a
# failed commit is reported to the client instead of being lost.
Conn = Annotated[AsyncConnection, Depends(unit_of_work, scope="function")]


def client_address(request: Request) -> str:
    """The caller's address as seen by this server (proxy headers are not trusted)."""
    return request.client.host if request.client else "unknown"
