"""Settings from the environment (prefix ``VISIONA_``) and an optional ``.env`` file.

Settings only describe; they build clients on request (:meth:`Settings.build_engine`,
:meth:`Settings.build_redis`) with explicit pool sizes and timeouts. Nothing is
built at import time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"


class Settings(BaseSettings):
    """Every knob of the server, each with a working embedded default."""

    model_config = SettingsConfigDict(
        env_prefix="VISIONA_", env_file=".env", extra="ignore", validate_default=True
    )

    host: str = Field("127.0.0.1", description="Address `visiona serve` binds to.")
    port: int = Field(8080, ge=0, le=65535, description="Port `visiona serve` binds to.")
    data_dir: Path = Field(Path(".visiona"), description="Where embedded data lives.")

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; unset means a SQLite file in DATA_DIR. "
        "`postgresql://` URLs are run with asyncpg.",
    )
    db_pool_size: int = Field(20, ge=1, description="PostgreSQL connections kept open.")
    db_max_overflow: int = Field(
        0,
        ge=0,
        description="Extra connections under burst, each closed when returned "
        "(a burst above the pool then reconnects per request; 0 makes it wait).",
    )
    db_pool_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a pooled conn.")
    db_connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection.")
    db_command_timeout: float = Field(30.0, gt=0, description="Seconds for one statement.")
    db_pool_recycle: int = Field(1800, ge=-1, description="Seconds before a conn is renewed.")
    db_hot_connections: int = Field(
        4,
        ge=0,
        description="Driver connections for hot reads, beside the pool (0: through the pool).",
    )
    sqlite_busy_timeout_ms: int = Field(5000, ge=0, description="SQLite lock wait.")

    redis_url: str | None = Field(
        None,
        description="Redis URL for web sessions and rate limits; unset = sessions in the "
        "database (in-process for `:memory:`), rate limits in-process.",
    )
    redis_pool_size: int = Field(50, ge=1, description="Max Redis connections.")
    redis_connect_timeout: float = Field(2.0, gt=0, description="Seconds to connect to Redis.")
    redis_socket_timeout: float = Field(2.0, gt=0, description="Seconds for one Redis command.")

    session_idle_ttl: int = Field(12 * 3600, gt=0, description="Web session idle timeout (s).")
    session_absolute_ttl: int = Field(
        7 * 24 * 3600, gt=0, description="Web session absolute lifetime (s)."
    )
    cookie_name: str = Field("visiona_session", description="Web session cookie name.")
    cookie_secure: bool = Field(default=False, description="Mark the session cookie `Secure`.")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (CORS, with credentials), "
        'as a JSON list, e.g. `["https://app.example"]`; empty = no CORS.',
    )

    login_rate_limit: int = Field(
        10,
        ge=1,
        description="Login attempts per email from one client address per window (a "
        "guesser's address is stopped; the owner's own address is not).",
    )
    login_rate_limit_per_address: int = Field(
        50, ge=1, description="Login attempts per client address per window (all emails)."
    )
    login_rate_limit_per_email: int = Field(
        100,
        ge=1,
        description="Login attempts per email per window from all addresses together "
        "(a generous ceiling against guessing from many addresses).",
    )
    login_rate_window: int = Field(60, ge=1, description="Login rate-limit window (s).")
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest JSON request body accepted (413 above)."
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="Largest request head (request line and headers) accepted (431 above).",
    )
    max_headers: int = Field(100, ge=8, description="Most request headers accepted (431 above).")
    body_read_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a request body may stall between two reads (408 after).",
    )
    forwarded_allow_ips: str = Field(
        "",
        description="Comma-separated addresses of proxies trusted to set `X-Forwarded-For` "
        "and `X-Forwarded-Proto` (`*` for any); empty: none, the peer address counts.",
    )

    # -- devices, pairing and agent tokens (devices feature) ------------------
    pairing_token_ttl: int = Field(
        900, ge=1, description="Default lifetime of a pairing token (s)."
    )
    pairing_token_max_ttl: int = Field(
        24 * 3600, ge=1, description="Longest `ttl_seconds` a user may ask for a pairing token."
    )
    session_token_ttl: int = Field(
        90 * 24 * 3600, ge=1, description="Lifetime of an agent session token (s)."
    )
    pair_rate_limit: int = Field(
        60, ge=1, description="Agent pair attempts per client address per window."
    )
    pair_rate_window: int = Field(60, ge=1, description="Agent pair rate-limit window (s).")
    enroll_rate_limit: int = Field(
        600,
        ge=1,
        description="Agent enrolments per enrollment key per pair window (each client "
        "address is also held to the pair limit).",
    )
    api_key_rate_limit: int = Field(
        600, ge=1, description="Requests one API key may make per window (then 429)."
    )
    api_key_rate_window: int = Field(60, ge=1, description="API key rate-limit window (s).")
    api_key_usage_flush: float = Field(
        5.0,
        gt=0,
        description="Seconds between two batched writes of API keys' `last_used_at`.",
    )

    # -- models and object storage (models feature) ---------------------------
    storage_url: str | None = Field(
        None,
        repr=False,
        description="Object store for model files: `s3://bucket/prefix`, `gs://…`, `az://…`, "
        "`memory://` or `file:///path`; unset means the directory DATA_DIR/objects.",
    )
    storage_options: dict[str, Any] = Field(
        {},
        repr=False,
        description="JSON object of obstore options for STORAGE_URL (e.g. `endpoint`, "
        "`region`, `access_key_id`, `client_options`, `retry_config` with durations in "
        "seconds). Never logged.",
    )
    model_max_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Largest model file accepted (413 above)."
    )

    # -- tunnel (tunnel feature) ----------------------------------------------
    tunnel_status_interval: float = Field(
        15.0,
        gt=0,
        description="Seconds between the batched `last_seen_at` writes (one statement for all "
        "devices of the node); a device not seen for three intervals reads as offline.",
    )
    tunnel_ping_interval: float = Field(
        15.0, gt=0, description="Seconds between keepalive pings on each agent tunnel."
    )
    tunnel_ping_timeout: float = Field(
        10.0, gt=0, description="Seconds a keepalive ping may wait; a miss marks `reconnecting`."
    )
    tunnel_ping_misses: int = Field(
        3, ge=1, description="Consecutive missed keepalives after which the tunnel is closed."
    )
    tunnel_stream_window: int = Field(
        16 * 1024 * 1024,
        ge=256 * 1024,
        le=2**31,
        description="Receive window granted to each tunnel stream (bytes; 4-16 MiB, "
        "i.e. 4194304-16777216, for bulk).",
    )
    tunnel_max_message: int = Field(
        1024 * 1024,
        ge=64 * 1024,
        description="Largest WebSocket message the server sends on a tunnel (bytes).",
    )
    tunnel_fd_reserve: int = Field(
        256,
        ge=16,
        description="File descriptors kept for the API, `/healthz`, the database and Redis: "
        "new tunnels are refused (503 + `Retry-After`) once the tunnels would leave fewer "
        "under the soft limit (raised to the hard limit at start; see `LimitNOFILE=`).",
    )
    tunnel_accept_rate: float = Field(
        0.0,
        ge=0,
        description="Tunnel upgrades accepted per second (a token bucket with a burst of one "
        "second's worth); the rest are answered 503 + `Retry-After` before the WebSocket "
        "handshake. 0 (the default): no rate bound, `VISIONA_TUNNEL_UPGRADE_CONCURRENCY` "
        "paces.",
    )
    tunnel_upgrade_concurrency: int = Field(
        1000,
        ge=1,
        description="Tunnel upgrades checked at once (token check to registration); the rest "
        "are answered 503 + `Retry-After`, so a slow database slows a connect storm down "
        "instead of queueing it.",
    )
    tunnel_drain_window: float = Field(
        5.0,
        ge=0,
        description="Seconds over which a stopping node closes its tunnels (1001, with a "
        "reconnect hint spread over the same window) before it stops.",
    )
    listen_backlog: int = Field(
        2048,
        ge=1,
        description="Length of the listening socket's queue of connections not yet accepted.",
    )
    proxy_response_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds the proxy waits for the device's response head (504 after).",
    )
    deploy_answer_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds a deployment waits for the agent's answer once the model file "
        "was sent (the agent verifies it and runs its deploy hook); the record fails after.",
    )
    rollout_max_transfers: int = Field(
        8,
        ge=1,
        description="Rollout transfers the scheduler of one node runs at once (a rollout to "
        "thousands of devices never starves proxied requests).",
    )
    rollout_interval: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds between two turns of the rollout scheduler (and between tries "
        "of its lease on a node that does not hold it).",
    )
    deploy_transfer_timeout: float = Field(
        1800.0,
        gt=0,
        description="Seconds a whole deployment may take (file and answer); it fails after. "
        "A record still pending/transferring that long (its server crashed) is failed when "
        "the next deployment to the device is requested.",
    )
    proxy_max_inflight_per_device: int = Field(
        8,
        ge=1,
        description="Proxied requests in flight per device on a node; beyond → 429 "
        "`device_busy` with Retry-After.",
    )
    proxy_during_deploy: Literal["allow", "refuse"] = Field(
        "allow",
        description="`refuse`: proxied requests get 429 `device_busy` while a deployment to "
        "the device is in progress or its agent reports the local service busy.",
    )

    # -- TCP forwards (`/devices/{id}/tcp/{port}`, `visiona forward`) ------------
    forward_max_per_device: int = Field(
        8,
        ge=1,
        description="Forwarded TCP connections open at once per device on a node; beyond → "
        "429 `too_many_forwards` before the WebSocket upgrade.",
    )
    forward_max_per_user: int = Field(
        16,
        ge=1,
        description="Forwarded TCP connections open at once per user on a node; beyond → "
        "429 `too_many_forwards`.",
    )
    forward_idle_timeout: float = Field(
        1800.0,
        gt=0,
        description="Seconds a forwarded connection may carry no byte either way before it "
        "is closed (WebSocket close 4408).",
    )
    forward_max_duration: float = Field(
        43200.0,
        gt=0,
        description="Seconds a forwarded connection may stay open at most (12 h by default); "
        "closed after with 4408.",
    )
    forward_connect_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds the cloud waits for the agent's answer to a TCP stream's header "
        "(close 4504 after: an agent that predates TCP forwarding and a silent local service).",
    )

    # -- audit trail (audit feature) ------------------------------------------
    audit_retention_days: int = Field(
        365,
        ge=1,
        description="Days an audit event is kept; older ones are deleted by `visiona audit "
        "prune` and by the server (in batches of 1000 rows, each its own short transaction).",
    )
    audit_prune_interval: float = Field(
        3600.0,
        gt=0,
        description="Seconds between the server's own prunes of expired audit events "
        "(one at start-up, then one per interval).",
    )

    # -- live event stream (events feature) -----------------------------------
    events_poll_interval: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Seconds between two reads of newly committed audit events by a node's "
        "event tail (`GET /api/v1/events`); the tail runs only while a stream is open there.",
    )
    events_lookback: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Seconds each read of the event tail looks back (events commit out of "
        "order, tunnel events in batches): an event committed later than this after it "
        "happened is in the audit trail but not on the live stream.",
    )
    events_resume_window: int = Field(
        600,
        ge=0,
        le=86400,
        description="Seconds within which `Last-Event-ID` resumes a stream by replaying the "
        "missed events; an older or unknown id is answered with a `reset` event.",
    )
    events_keepalive: float = Field(
        15.0,
        gt=0,
        le=300,
        description="Seconds between two keep-alive comments on an idle event stream.",
    )

    # -- webhooks (delivery: visiona.webhooks) ---------------------------------
    webhook_dispatcher: bool = Field(
        default=True,
        description="Run the webhook dispatcher on this node (it delivers the outbox's due "
        "deliveries; every node may run one: a lease keeps an attempt to one node).",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhook URLs whose host is (or resolves to) a loopback, private, "
        "link-local, shared or reserved address (tests, closed networks); refused otherwise.",
    )
    webhook_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds a webhook attempt may take to connect."
    )
    webhook_timeout: float = Field(
        15.0,
        gt=0,
        description="Seconds a whole webhook attempt may take (resolve, connect, send, the "
        "answer's head and its first 1 KiB); a failed attempt after.",
    )
    webhook_retry_schedule: str = Field(
        "0,5,300,1800,7200,18000,36000,36000",
        description="Comma-separated seconds before each attempt of a webhook delivery, "
        "counted from the previous attempt; the first is 0 (at once, after the event): by "
        "default immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, about 27.6 h in all. "
        "When the last attempt fails the delivery is `failed` and its endpoint disabled.",
    )
    webhook_poll_interval: float = Field(
        0.5,
        gt=0,
        description="Seconds between two looks of the webhook dispatcher for due deliveries.",
    )
    webhook_lease_seconds: float = Field(
        60.0,
        gt=0,
        description="Seconds a node holds a delivery it claimed (longer than WEBHOOK_TIMEOUT); "
        "a node that dies mid-attempt leaves it to be claimed again after.",
    )
    webhook_concurrency: int = Field(
        16, ge=1, description="Webhook attempts one node runs at once (one per endpoint)."
    )

    # -- cluster (several nodes behind one address) ---------------------------
    node_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="This node's id in the tunnel registry; unset means a random id per start.",
    )
    node_url: str | None = Field(
        None,
        description="Base URL other nodes use to reach this one (e.g. `http://10.0.0.5:8080`); "
        "unset in a cluster means the address `serve` bound. Needs REDIS_URL and "
        "INTERNAL_TOKEN.",
    )
    metrics_token: SecretStr | None = Field(
        None,
        repr=False,
        description="Bearer token `/metrics` requires (`Authorization: Bearer <token>`, 401 "
        "without it); unset = `/metrics` answers anyone who reaches the node, so keep it "
        "off the public address (docs/nginx.conf blocks it). Never logged.",
    )
    internal_token: SecretStr | None = Field(
        None,
        repr=False,
        description="Shared secret of node-to-node calls; setting it (with REDIS_URL) makes "
        "the node join the cluster. Never logged.",
    )
    cluster_connect_timeout: float = Field(
        2.0, gt=0, description="Seconds to connect to another node when forwarding (502 after)."
    )

    # -- logging and development ----------------------------------------------
    log_level: str = Field("INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="Log format.")
    seed_demo_data: bool = Field(
        default=False, description="Create demo data at `serve` (dev only)."
    )

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        backend = make_url(value).get_backend_name()
        if backend not in {"sqlite", "postgresql"}:
            raise ValueError("database_url must be a sqlite or postgresql URL")
        return value

    @field_validator("node_url")
    @classmethod
    def _http_node_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if urlsplit(value).scheme not in {"http", "https"} or not urlsplit(value).hostname:
            raise ValueError("node_url must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _retry_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @model_validator(mode="after")
    def _lease_outlives_an_attempt(self) -> Self:
        if self.webhook_lease_seconds <= self.webhook_timeout:
            raise ValueError("VISIONA_WEBHOOK_LEASE_SECONDS must be longer than WEBHOOK_TIMEOUT")
        return self

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        """The retry schedule as seconds (see ``webhook_retry_schedule``)."""
        return parse_schedule(self.webhook_retry_schedule)

    @model_validator(mode="after")
    def _cluster_needs_redis(self) -> Self:
        token = self.internal_token.get_secret_value() if self.internal_token else ""
        if (self.node_url or token) and not self.redis_url:
            raise ValueError(
                "VISIONA_NODE_URL and VISIONA_INTERNAL_TOKEN need VISIONA_REDIS_URL "
                "(a cluster keeps its tunnel registry in Redis)"
            )
        if self.node_url and not token:
            raise ValueError("VISIONA_NODE_URL needs VISIONA_INTERNAL_TOKEN")
        if token and len(token) < 16:
            raise ValueError("VISIONA_INTERNAL_TOKEN must be at least 16 characters")
        return self

    @property
    def clustered(self) -> bool:
        """Whether this node joins a cluster (internal token and Redis both set)."""
        return bool(self.internal_token and self.redis_url)

    # -- database -------------------------------------------------------------

    @property
    def database(self) -> URL:
        """The effective database URL, with the async driver filled in."""
        if self.database_url is None:
            return make_url(f"{SQLITE_DRIVER}:///{(self.data_dir / 'visiona.db').as_posix()}")
        url = make_url(self.database_url)
        if url.get_backend_name() == "postgresql":
            return url.set(drivername=POSTGRES_DRIVER)
        return url.set(drivername=SQLITE_DRIVER)

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is the embedded SQLite."""
        return self.database.get_backend_name() == "sqlite"

    @property
    def database_target(self) -> str:
        """The database as ``host:port/dbname`` (or the SQLite path), never credentials."""
        return safe_target(self.database)

    def build_engine(self) -> AsyncEngine:
        """Create the async engine with explicit pool sizes and timeouts."""
        from visiona.kit.database import create_engine_for  # noqa: PLC0415 - keep import light

        return create_engine_for(self)

    # -- object storage -------------------------------------------------------

    @property
    def storage_target(self) -> str:
        """The object store as ``scheme://host/path`` (or the local directory), never secrets."""
        if not self.storage_url:
            return f"local:{(self.data_dir / 'objects').as_posix()}"
        parts = urlsplit(self.storage_url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}{parts.path}"

    # -- redis ----------------------------------------------------------------

    @property
    def redis_target(self) -> str | None:
        """Redis as ``host:port/db``, never the password."""
        if self.redis_url is None:
            return None
        return safe_target(make_url(self.redis_url.replace("rediss://", "redis://", 1)))

    def build_redis(self) -> Redis | None:
        """Create the Redis client (a pool, no connection yet), or None when unset."""
        if not self.redis_url:
            return None
        from redis.asyncio import BlockingConnectionPool, Redis  # noqa: PLC0415

        pool = BlockingConnectionPool.from_url(
            self.redis_url,
            max_connections=self.redis_pool_size,
            timeout=self.redis_connect_timeout,
            socket_connect_timeout=self.redis_connect_timeout,
            socket_timeout=self.redis_socket_timeout,
            health_check_interval=30,
        )
        return Redis(connection_pool=pool)


def safe_target(url: URL) -> str:
    """Render a URL as ``host:port/db`` (or ``sqlite:path``) without user or password."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return f"sqlite:{url.database or ':memory:'}"
    default_port = {"postgresql": 5432, "redis": 6379}.get(backend, 0)
    return f"{url.host or 'localhost'}:{url.port or default_port}/{url.database or ''}"


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"0,5,300"`` as ``(0.0, 5.0, 300.0)``; a ValueError unless one or more seconds >= 0."""
    try:
        delays = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError("the retry schedule must be comma-separated seconds") from None
    if not delays or any(not math.isfinite(d) or d < 0 for d in delays):
        raise ValueError("the retry schedule must be seconds >= 0")
    if delays[0] != 0:
        raise ValueError("the retry schedule starts with 0: the first attempt is immediate")
    return delays
