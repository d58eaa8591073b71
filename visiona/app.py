"""The FastAPI application factory and its lifespan.

Nothing is built at import time: :func:`create_app` takes :class:`Settings` and the
lifespan builds the engine, Redis and the stores from them.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from visiona import __version__
from visiona.apikeys.access import ApiKeys
from visiona.apikeys.dependencies import API_KEYS
from visiona.apikeys.endpoints import router as apikeys_router
from visiona.audit.dependencies import PRUNER
from visiona.audit.endpoints import router as audit_router
from visiona.audit.retention import Pruner
from visiona.auth.dependencies import SESSIONS, permission_of
from visiona.auth.endpoints import router as auth_router
from visiona.auth.sessions import SessionStore, build_session_store
from visiona.cluster.dependencies import CLUSTER
from visiona.cluster.endpoints import internal_router as cluster_internal_router
from visiona.cluster.service import build_cluster, build_registry
from visiona.console import install as install_console
from visiona.deployments.delivery import LINK_KIND, Delivery
from visiona.deployments.dependencies import DELIVERY
from visiona.deployments.endpoints import internal_router as deployments_internal_router
from visiona.deployments.endpoints import router as deployments_router
from visiona.deployments.recovery import Recovery
from visiona.devices.dependencies import DEVICES
from visiona.devices.endpoints import agent_router
from visiona.devices.endpoints import router as devices_router
from visiona.devices.service import Devices
from visiona.enrollment.endpoints import agent_router as enrollment_agent_router
from visiona.enrollment.endpoints import router as enrollment_router
from visiona.events.dependencies import EVENTS
from visiona.events.endpoints import router as events_router
from visiona.events.hub import EventHub
from visiona.kit.database import Database
from visiona.kit.deps import DEVICE_REVOKED, DRAIN, RUNTIME, UPGRADE_GATES
from visiona.kit.edge import create_fastapi, install_cors, install_security_schemes
from visiona.kit.http import install_edge, install_error_handlers
from visiona.kit.logs import install_server_log_filters
from visiona.kit.metrics import Metrics
from visiona.kit.migrate import status_from_connection, upgrade_on_connection
from visiona.kit.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from visiona.kit.routing import skip_unreachable
from visiona.kit.runtime import DeviceHook, DeviceRevoked, DrainHook, Runtime
from visiona.kit.settings import Settings
from visiona.models.dependencies import STORAGE
from visiona.models.endpoints import router as models_router
from visiona.models.storage import ObjectStorage
from visiona.ops.endpoints import router as ops_router
from visiona.orgs.access import Memberships
from visiona.orgs.dependencies import MEMBERSHIPS
from visiona.orgs.endpoints import router as orgs_router
from visiona.orgs.openapi import install_permission_docs
from visiona.rollouts.dependencies import SCHEDULER
from visiona.rollouts.endpoints import router as rollouts_router
from visiona.rollouts.scheduler import Scheduler, build_lease
from visiona.tokens.endpoints import router as tokens_router
from visiona.tunnel.dependencies import HUB, RELAY
from visiona.tunnel.endpoints import internal_router as tunnel_internal_router
from visiona.tunnel.endpoints import router as tunnel_router
from visiona.tunnel.hub import TunnelHub
from visiona.tunnel.relay import Relay
from visiona.tunnel.tcp_endpoints import serve_forward
from visiona.tunnel.tcp_link import KIND as FORWARD_KIND
from visiona.webhooks.dispatcher import DISPATCHER, Dispatcher
from visiona.webhooks.endpoints import router as webhooks_router
from visiona.wire import API_PREFIX, TUNNEL_PATH

_LOGGER = logging.getLogger(__name__)


class MigrationsPendingError(RuntimeError):
    """The database schema is behind the packaged migrations."""


def _is_memory(settings: Settings) -> bool:
    return settings.is_sqlite and settings.database.database in (None, "", ":memory:")


async def build_runtime(settings: Settings, metrics: Metrics) -> Runtime:
    """The infrastructure of ``settings``: the database (checked to be migrated), Redis
    and the rate limiter. Raises :class:`MigrationsPendingError` when the schema is behind."""
    db = Database(
        settings.build_engine(),
        settings.database_target,
        hot_connections=settings.db_hot_connections,
        recycle=settings.db_pool_recycle,
    )
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
    limiter: RateLimiter = MemoryRateLimiter() if redis is None else RedisRateLimiter(redis)
    metrics.gauge("visiona_db_pool_in_use", "Database connections checked out.", db.pool_in_use)
    return Runtime(settings=settings, db=db, limiter=limiter, metrics=metrics, redis=redis)


async def close_runtime(runtime: Runtime) -> None:
    """Release the infrastructure's clients (after every feature's object is closed)."""
    if runtime.redis is not None:
        await runtime.redis.aclose()
    await runtime.db.dispose()


@asynccontextmanager
async def run_features(
    app: FastAPI, runtime: Runtime, storage: ObjectStorage
) -> AsyncIterator[SessionStore]:
    """Build every feature's live object, hand each out through its feature's
    dependencies, and close them in reverse order when the block ends.

    The one place that knows every feature: the tunnel hub (with the cluster's
    registry when clustered), the cluster (and what its node link serves here), the
    proxy's relay, the model storage, deployments' delivery and recovery, the rollout
    scheduler, the webhook dispatcher, the session store, the membership cache, the API
    key cache and its usage batch, the audit pruner, the live event stream's hub, and who
    hears of a revoked device.
    """
    settings, db = runtime.settings, runtime.db
    sessions = build_session_store(
        settings,
        db,
        runtime.redis,
        in_memory=_is_memory(settings),
        on_error=runtime.metrics.session_store_errors.inc,
    )
    async with AsyncExitStack() as stack:
        registry = build_registry(settings, runtime.redis)
        hub = TunnelHub(db, settings, registry)
        cluster = build_cluster(
            settings, registry, lambda device_id: hub.get(device_id) is not None
        )
        stack.push_async_callback(cluster.close)  # last: the connections to the other nodes
        await hub.start()
        stack.push_async_callback(hub.close)  # its tunnels write offline, release their leases
        hub.register_metrics(runtime.metrics)
        hooks: list[DeviceHook] = [hub.device_revoked]
        if registry is not None:
            # Other nodes close their tunnel of a revoked device; so does this one on theirs.
            hooks.append(registry.publish_revoked)
            registry.listen_revoked(hub.device_revoked)
            stack.push_async_callback(registry.close)  # stop listening before the hub closes
        recovery = Recovery(db, cluster)
        await recovery.start()
        stack.push_async_callback(recovery.stop)
        memberships = Memberships(db, runtime.redis)
        memberships.start()  # with Redis: hears every node's membership changes
        stack.push_async_callback(memberships.close)
        api_keys = ApiKeys(db, runtime.redis, flush_interval=settings.api_key_usage_flush)
        api_keys.start()  # batched last_used_at; with Redis: hears every node's revocations
        stack.push_async_callback(api_keys.close)  # writes the last uses
        pruner = Pruner(db, settings.audit_retention_days, settings.audit_prune_interval)
        pruner.start()
        stack.push_async_callback(pruner.stop)

        RUNTIME.provide(app, runtime)
        DEVICE_REVOKED.provide(app, DeviceRevoked.of(hooks))
        SESSIONS.provide(app, sessions)
        MEMBERSHIPS.provide(app, memberships)
        API_KEYS.provide(app, api_keys)
        PRUNER.provide(app, pruner)
        STORAGE.provide(app, storage)
        DEVICES.provide(app, Devices.from_settings(settings))
        _hand_out_hub(app, hub)
        _start_events(app, stack, runtime, hub.drain)
        CLUSTER.provide(app, cluster)
        relay = Relay(hub, cluster, db, settings.proxy_response_timeout)
        RELAY.provide(app, relay)
        delivery = Delivery(db, settings, storage, hub, cluster)
        DELIVERY.provide(app, delivery)
        # What another node's link carries here, served from this node's tunnels only.
        cluster.handlers.proxy(relay.here)
        cluster.handlers.call(LINK_KIND, delivery.on_link_call)
        cluster.handlers.stream(FORWARD_KIND, functools.partial(serve_forward, app))
        # Rollouts: the scheduler runs on every node, acts under its lease (after the
        # deployments' recovery above failed what a previous run left unfinished).
        scheduler = Scheduler(db, settings, delivery, build_lease(runtime.redis, cluster))
        _start_scheduler(app, stack, scheduler, settings)
        # Webhooks: every node's dispatcher delivers the outbox under per-row leases.
        _start_dispatcher(app, stack, runtime, cluster.node_id)
        yield sessions


def _hand_out_hub(app: FastAPI, hub: TunnelHub) -> None:
    """Hand out the tunnel hub, and its pacing gate, which `visiona serve`'s HTTP protocol
    asks before a tunnel upgrade reaches its route (visiona/kit/upgrades.py)."""
    HUB.provide(app, hub)
    UPGRADE_GATES.provide(app, {f"{API_PREFIX}{TUNNEL_PATH}": hub.refuse_upgrade})


def _start_events(
    app: FastAPI, stack: AsyncExitStack, runtime: Runtime, tunnels_drain: DrainHook
) -> EventHub:
    """The live event stream's hub, handed out and closed with ``stack``: its tail reads
    the shared database only while a stream is open here. At SIGTERM (the drain hooks,
    kit/serve.py) the event streams end first, so they do not hold the shutdown, then
    the tunnels drain."""
    settings = runtime.settings
    events = EventHub(
        runtime.db,
        poll_interval=settings.events_poll_interval,
        lookback=settings.events_lookback,
        metrics=runtime.metrics,
    )
    EVENTS.provide(app, events)
    stack.push_async_callback(events.close)
    DRAIN.provide(app, (events.close, tunnels_drain))
    return events


def _start_scheduler(
    app: FastAPI, stack: AsyncExitStack, scheduler: Scheduler, settings: Settings
) -> None:
    """Hand out the rollout scheduler and start it (stopped when ``stack`` closes), except
    on an in-memory SQLite database (see :func:`_in_memory`)."""
    SCHEDULER.provide(app, scheduler)
    if not _in_memory(settings):
        scheduler.start()
        stack.push_async_callback(scheduler.stop)


def _start_dispatcher(
    app: FastAPI, stack: AsyncExitStack, runtime: Runtime, cluster_node: str | None
) -> None:
    """Build and hand out the webhook dispatcher, named as the cluster names this node
    (else ``VISIONA_NODE_ID``, else a random id); start it unless
    ``VISIONA_WEBHOOK_DISPATCHER`` is off or the database is an in-memory SQLite one
    (see :func:`_in_memory`); stopped (its HTTP clients closed) when ``stack`` closes."""
    settings = runtime.settings
    node_id = cluster_node or settings.node_id or f"node-{uuid.uuid4().hex[:12]}"
    dispatcher = Dispatcher(runtime.db, settings, node_id=node_id, metrics=runtime.metrics)
    DISPATCHER.provide(app, dispatcher)
    if settings.webhook_dispatcher and not _in_memory(settings):
        dispatcher.start()
    stack.push_async_callback(dispatcher.stop)


def _in_memory(settings: Settings) -> bool:
    """Whether the database is an in-memory SQLite one: one connection shared by every
    task (tests only), where the rollout scheduler's turns would start transactions
    inside the requests' own, so it is not started there."""
    url = settings.database
    return url.drivername.startswith("sqlite") and url.database in (None, "", ":memory:")


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
        # First: a bad storage URL or option fails before any connection is opened.
        storage = ObjectStorage.from_settings(settings)
        runtime = await build_runtime(settings, metrics)
        try:
            async with run_features(app, runtime, storage) as sessions:
                _LOGGER.info(
                    "visiona %s ready: database %s, sessions %s, model files %s",
                    __version__,
                    settings.database_target,
                    _sessions_target(settings, sessions),
                    settings.storage_target,
                )
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
    # organisations feature router (members, invitations)
    app.include_router(orgs_router, prefix=API_PREFIX)
    # API keys feature router
    app.include_router(apikeys_router, prefix=API_PREFIX)
    # devices feature routers
    app.include_router(devices_router, prefix=API_PREFIX)
    app.include_router(tokens_router, prefix=API_PREFIX)
    app.include_router(agent_router, prefix=API_PREFIX)
    app.include_router(enrollment_router, prefix=API_PREFIX)
    app.include_router(enrollment_agent_router, prefix=API_PREFIX)

    # models feature routers
    app.include_router(models_router, prefix=API_PREFIX)

    # deployments feature routers
    app.include_router(deployments_router, prefix=API_PREFIX)

    # rollouts feature routers
    app.include_router(rollouts_router, prefix=API_PREFIX)

    # audit feature routers
    app.include_router(audit_router, prefix=API_PREFIX)
    # events feature router (the live stream of the audit trail)
    app.include_router(events_router, prefix=API_PREFIX)
    # webhooks feature router (endpoints, test events, delivery log)
    app.include_router(webhooks_router, prefix=API_PREFIX)
    app.include_router(ops_router)
    # the routes other cluster nodes forward to: the node link (the cluster's), and each
    # feature's own HTTP route (older nodes, during a rolling upgrade)
    app.include_router(cluster_internal_router)
    app.include_router(tunnel_internal_router)
    app.include_router(deployments_internal_router)

    # the web console (pages at /, scripts and styles at /static)
    install_console(app)
    # issue 22 item 6: a request no longer tries the routes of routers its path cannot
    # reach (every router included before its own), order and OpenAPI unchanged
    skip_unreachable(app)

    # issue 26: one ASGI layer (request id, limits, HEAD like GET, errors, metrics,
    # access log) between the server and the router, instead of FastAPI's stack
    install_edge(
        app,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        body_read_timeout=settings.body_read_timeout,
        unlimited=_brings_own_limit,
    )
    # issue 11: CORS for listed origins (outside the edge), bearer + cookie in OpenAPI
    install_cors(app, settings.cors_origins)
    install_security_schemes(app, settings.cookie_name)
    install_permission_docs(app, permission_of)  # x-visiona-permission per operation
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
