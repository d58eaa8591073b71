"""The FastAPI application factory and its lifespan.

Nothing is built at import time: :func:`create_app` takes :class:`Settings` and the
lifespan builds the engine, Redis and the stores from them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from visiona import __version__
from visiona.audit.endpoints import router as audit_router
from visiona.audit.retention import Pruner
from visiona.auth.endpoints import router as auth_router
from visiona.auth.sessions import (
    MemorySessionStore,
    RedisSessionStore,
    SessionStore,
    SqlSessionStore,
)
from visiona.cluster.deployments import fail_left_unfinished
from visiona.cluster.endpoints import router as internal_router
from visiona.cluster.service import build_cluster
from visiona.console import install as install_console
from visiona.deployments.endpoints import router as deployments_router
from visiona.devices.endpoints import agent_router
from visiona.devices.endpoints import router as devices_router
from visiona.kit.database import Database
from visiona.kit.edge import (
    HeadAsGetMiddleware,
    create_fastapi,
    install_cors,
    install_security_schemes,
)
from visiona.kit.http import RequestContextMiddleware, install_error_handlers
from visiona.kit.logs import install_server_log_filters
from visiona.kit.metrics import Metrics
from visiona.kit.migrate import status_from_connection, upgrade_on_connection
from visiona.kit.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from visiona.kit.runtime import Runtime
from visiona.kit.settings import Settings
from visiona.models.endpoints import router as models_router
from visiona.models.storage import ObjectStorage
from visiona.ops.endpoints import router as ops_router
from visiona.tokens.endpoints import router as tokens_router
from visiona.tunnel.endpoints import router as tunnel_router
from visiona.tunnel.hub import TunnelHub
from visiona.wire import API_PREFIX

_LOGGER = logging.getLogger(__name__)


class MigrationsPendingError(RuntimeError):
    """The database schema is behind the packaged migrations."""


def _is_memory(settings: Settings) -> bool:
    return settings.is_sqlite and settings.database.database in (None, "", ":memory:")


async def build_runtime(settings: Settings, metrics: Metrics) -> Runtime:
    """Build the database, session store, rate limiter and model storage of ``settings``."""
    # First: a bad storage URL or option fails before any connection is opened.
    model_storage = ObjectStorage.from_settings(settings)
    db = Database(settings.build_engine(), settings.database_target)
    async with db.engine.begin() as conn:
        if _is_memory(settings):
            await conn.run_sync(upgrade_on_connection)
        status = await conn.run_sync(status_from_connection)
    if not status.up_to_date:
        await db.dispose()
        raise MigrationsPendingError(
            f"database {settings.database_target} has pending migrations "
            f"({', '.join(status.pending)}); run `visiona migrate up`"
        )
    redis = settings.build_redis()
    sessions: SessionStore
    limiter: RateLimiter
    if redis is not None:
        sessions = RedisSessionStore(
            redis,
            settings.session_idle_ttl,
            settings.session_absolute_ttl,
            on_error=metrics.session_store_errors.inc,
        )
        limiter = RedisRateLimiter(redis)
    else:
        if _is_memory(settings):  # nothing survives a restart anyway
            sessions = MemorySessionStore(settings.session_idle_ttl, settings.session_absolute_ttl)
        else:  # the SQLite file or PostgreSQL: users stay signed in across a restart
            sessions = SqlSessionStore(db, settings.session_idle_ttl, settings.session_absolute_ttl)
        limiter = MemoryRateLimiter()
    metrics.gauge("visiona_db_pool_in_use", "Database connections checked out.", db.pool_in_use)
    runtime = Runtime(
        settings=settings,
        db=db,
        sessions=sessions,
        limiter=limiter,
        metrics=metrics,
        redis=redis,
        model_storage=model_storage,
    )
    cluster = build_cluster(runtime, None)
    hub = TunnelHub(db, settings, cluster.registry if cluster else None)
    await hub.start()
    hub.register_metrics(metrics)
    runtime.hub = hub
    runtime.on_device_revoked.append(hub.device_revoked)
    runtime.on_drain.append(hub.drain)
    if cluster is not None:
        # Other nodes close their tunnel of a revoked device; so does this one on theirs.
        runtime.on_device_revoked.append(cluster.registry.publish_revoked)
        cluster.registry.listen_revoked(hub.device_revoked)
        cluster.start_sweeping(db)
    else:
        await fail_left_unfinished(db)
    runtime.audit_pruner = Pruner(db, settings.audit_retention_days, settings.audit_prune_interval)
    runtime.audit_pruner.start()
    return runtime


async def close_runtime(runtime: Runtime) -> None:
    """Release every client the runtime holds (live tunnels first: they write their status)."""
    pruner, runtime.audit_pruner = runtime.audit_pruner, None
    if pruner is not None:
        await pruner.stop()
    cluster, runtime.cluster = runtime.cluster, None
    if cluster is not None:
        await cluster.close()
    hub, runtime.hub = runtime.hub, None
    if hub is not None:
        await hub.close()
    if cluster is not None:
        await cluster.forwarder.close()
    if runtime.redis is not None:
        await runtime.redis.aclose()
    # obstore stores hold no connection that needs closing; drop the reference.
    runtime.model_storage = None
    await runtime.db.dispose()


def _sessions_target(settings: Settings, sessions: SessionStore) -> str:
    """Where web sessions live, for the start-up line (never a password)."""
    if sessions.kind == "redis":
        return settings.redis_target or "redis"
    return "in the database" if sessions.kind == "database" else "in-process"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Create the application for ``settings`` (read from the environment when None)."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await build_runtime(settings, metrics)
        app.state.runtime = runtime
        _LOGGER.info(
            "visiona %s ready: database %s, sessions %s, model files %s",
            __version__,
            settings.database_target,
            _sessions_target(settings, runtime.sessions),
            settings.storage_target,
        )
        try:
            yield
        finally:
            await close_runtime(runtime)

    app = create_fastapi(
        title="visionA API",
        version=__version__,
        description="Cloud backend for Kneron edge-AI USB accelerators. "
        'Errors are `{"error": {"code", "message"}}`.',
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_server_log_filters()
    # tunnel feature routers first: FastAPI tries routes in order, and a proxied request
    # (the hot path) behind the 29 API routes paid for 29 failed matches; an API request
    # now pays for 8 cheap ones (the proxy's pattern fails at `/devices/`).
    app.include_router(tunnel_router, prefix=API_PREFIX)
    app.include_router(auth_router, prefix=API_PREFIX)
    # devices feature routers
    app.include_router(devices_router, prefix=API_PREFIX)
    app.include_router(tokens_router, prefix=API_PREFIX)
    app.include_router(agent_router, prefix=API_PREFIX)

    # models feature routers
    app.include_router(models_router, prefix=API_PREFIX)

    # deployments feature routers
    app.include_router(deployments_router, prefix=API_PREFIX)

    # audit feature routers
    app.include_router(audit_router, prefix=API_PREFIX)
    app.include_router(ops_router)
    app.include_router(internal_router)

    # the web console (pages at /, scripts and styles at /static)
    install_console(app)

    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        body_read_timeout=settings.body_read_timeout,
        unlimited=_brings_own_limit,
    )
    # issue 11: HEAD like GET, CORS for listed origins, bearer + cookie in OpenAPI
    app.add_middleware(HeadAsGetMiddleware)
    install_cors(app, settings.cors_origins)
    install_security_schemes(app, settings.cookie_name)
    return app


def _brings_own_limit(path: str) -> bool:
    """Uploads and proxied requests stream large bodies and enforce their own limits.

    Only the two model upload routes (``POST /models``, ``PUT /models/{id}/file``) are
    exempt among the models routes: ``PATCH /models/{id}`` is JSON and keeps the limit.
    """
    models = f"{API_PREFIX}/models"
    if path == models or (path.startswith(f"{models}/") and path.endswith("/file")):
        return True
    return path.startswith((f"{API_PREFIX}/devices/", "/internal/")) and "/proxy/" in path
