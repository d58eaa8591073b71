"""FastAPI dependencies shared by every feature: the infrastructure and the unit of work.

An endpoint declares what it uses — :data:`DatabaseDep`, :data:`SettingsDep`,
:data:`LimiterDep`, :data:`MetricsDep`, :data:`DeviceRevokedDep` — never the whole
:class:`Runtime`; features hand out their own live objects from their
``dependencies`` modules.

The unit-of-work rule, predictable from the route: ``GET`` and ``HEAD`` run as a read
(:meth:`Database.reading`: autocommit, no BEGIN/COMMIT, no SQLite write lock); every
other method runs in one transaction committed before the response is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import HTTPConnection

from visiona.kit.database import Database
from visiona.kit.metrics import Metrics
from visiona.kit.ratelimit import RateLimiter
from visiona.kit.runtime import DeviceRevoked, DrainHook, Provided, Runtime
from visiona.kit.settings import Settings
from visiona.kit.upgrades import UpgradeGate

READ_METHODS = frozenset({"GET", "HEAD"})

#: The application's infrastructure (filled by the lifespan before the first request).
RUNTIME = Provided[Runtime]("runtime")
#: The revocation hooks the composition root chose.
DEVICE_REVOKED = Provided[DeviceRevoked]("device_revoked")
#: What runs when the server is asked to stop, before uvicorn closes its connections
#: (:class:`visiona.kit.serve.NodeServer`): the tunnels drain.
DRAIN = Provided[tuple[DrainHook, ...]]("drain")
#: The gates of WebSocket upgrades by request path, asked before the application runs
#: (:mod:`visiona.kit.upgrades`): the tunnels' pacing.
UPGRADE_GATES = Provided[Mapping[str, UpgradeGate]]("upgrade_gates")


def runtime_of(request: HTTPConnection) -> Runtime:
    """The application's :class:`Runtime`, for code off the dependency machinery."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_database(request: HTTPConnection) -> Database:
    """The application's database."""
    return runtime_of(request).db


async def get_settings(request: HTTPConnection) -> Settings:
    """The application's settings."""
    return runtime_of(request).settings


async def get_limiter(request: HTTPConnection) -> RateLimiter:
    """The application's rate limiter."""
    return runtime_of(request).limiter


async def get_metrics(request: HTTPConnection) -> Metrics:
    """The application's metrics."""
    return runtime_of(request).metrics


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DeviceRevokedDep = Annotated[DeviceRevoked, Depends(DEVICE_REVOKED.dependency)]


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
