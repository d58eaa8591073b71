"""The tables, declared once with SQLAlchemy Core (DESIGN §3, seeds 000 and 002).

Migrations in :mod:`visiona.kit.migrations` build this schema; a test checks that
the migrated database and these declarations never drift apart. Partial indexes
cover only live rows (``deleted_at IS NULL`` / ``revoked_at IS NULL``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    false,
    func,
    text,
    true,
)
from sqlalchemy.dialects import postgresql

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores ``timestamptz``; SQLite stores ISO text, which compares
    correctly as long as every value is written in UTC by this type.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC (naive values are taken as UTC)."""
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:  # noqa: ARG002 - signature fixed by TypeDecorator
        """Return an aware UTC datetime."""
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


Labels = JSON().with_variant(postgresql.ARRAY(Text), "postgresql")
#: A JSON list of TCP port numbers: JSONB on PostgreSQL, JSON text on SQLite.
PortList = JSON().with_variant(postgresql.JSONB(), "postgresql")


def _now() -> Any:
    return func.now()


users = Table(
    "users",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("email", Text, nullable=False),
    Column("name", Text, nullable=False, server_default=""),
    Column("password_hash", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=_now()),
)
# No citext: uniqueness is on lower(email) (seed 000's note).
Index("uq_users_email_lower", func.lower(users.c.email), unique=True)

# Organisations own devices, models, pairing tokens, deployments and audit events
# (issue 22, migration 0008); ``owner_user_id`` on those rows means "created by".
organizations = Table(
    "organizations",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", Text, nullable=False),
    # the organisation every user gets at sign-up (cannot be left by its owner)
    Column("personal", Boolean, nullable=False, server_default=false()),
    Column("created_by", Uuid, ForeignKey("users.id"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=_now()),
)

memberships = Table(
    "memberships",
    metadata,
    Column(
        "org_id",
        Uuid,
        ForeignKey("organizations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("user_id", Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", Text, nullable=False),  # owner | admin | operator | viewer
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=_now()),
)
Index("idx_memberships_user", memberships.c.user_id)

invitations = Table(
    "invitations",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("org_id", Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("email", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("token_hash", Text, nullable=False),  # sha256(plaintext), never the plaintext
    Column("created_by", Uuid, ForeignKey("users.id"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("accepted_at", UTCDateTime, nullable=True),
    Column("accepted_by", Uuid, ForeignKey("users.id"), nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)
Index("uq_invitations_token_hash", invitations.c.token_hash, unique=True)
Index("idx_invitations_org", invitations.c.org_id, invitations.c.created_at)

#: API keys of an organisation (issue 22 item 4): ``vak_…`` shown once, sha256 at rest.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Uuid, primary_key=True),  # the public id (API, audit events)
    Column("org_id", Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("created_by", Uuid, ForeignKey("users.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("prefix", Text, nullable=False),  # the first characters, to recognise a key
    Column("key_hash", Text, nullable=False),  # sha256(plaintext), never the plaintext
    Column("scopes", Text, nullable=False),  # space-separated, sorted
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)
Index("uq_api_keys_key_hash", api_keys.c.key_hash, unique=True)
Index("idx_api_keys_org", api_keys.c.org_id, api_keys.c.created_at)

models = Table(
    "models",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("owner_user_id", Uuid, ForeignKey("users.id"), nullable=False),
    Column("org_id", Uuid, ForeignKey("organizations.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("target_chip", Text, nullable=False),
    Column("file_size", BigInteger, nullable=False, server_default=text("0")),
    Column("sha256", Text, nullable=True),
    Column("source", Text, nullable=False, server_default="uploaded"),
    Column("labels", Labels, nullable=True),
    Column("storage_key", Text, nullable=True),
    Column("faa_object_key", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("uploaded_at", UTCDateTime, nullable=True),
    Column("deleted_at", UTCDateTime, nullable=True),
)
_live_model = models.c.deleted_at.is_(None)
Index(
    "idx_models_org_active",
    models.c.org_id,
    models.c.created_at,
    postgresql_where=_live_model,
    sqlite_where=_live_model,
)
Index(
    "idx_models_org_chip_active",
    models.c.org_id,
    models.c.target_chip,
    postgresql_where=_live_model,
    sqlite_where=_live_model,
)
Index(
    "idx_models_org_source_active",
    models.c.org_id,
    models.c.source,
    postgresql_where=_live_model,
    sqlite_where=_live_model,
)

devices = Table(
    "devices",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("owner_user_id", Uuid, ForeignKey("users.id"), nullable=False),
    Column("org_id", Uuid, ForeignKey("organizations.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("device_type", Text, nullable=True),
    Column("serial_number", Text, nullable=True),
    # tunnel level, observed by the cloud: online | offline | reconnecting | error
    Column("remote_status", Text, nullable=False, server_default="offline"),
    Column("last_seen_at", UTCDateTime, nullable=True),
    Column("last_connected_at", UTCDateTime, nullable=True),
    # USB level, reported by the agent: online | offline | unknown
    Column("status", Text, nullable=False, server_default="unknown"),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("paired_at", UTCDateTime, nullable=True),
    # the agent's local service says it is busy (reset when a tunnel comes up)
    Column("busy", Boolean, nullable=False, server_default=false()),
    # the TCP ports the agent allows (`--allow-port`), as it last reported; NULL: never said
    Column("tcp_ports", PortList, nullable=True),
    Column("deleted_at", UTCDateTime, nullable=True),
    # the epoch of the tunnel that last came up: status writes of older tunnels miss
    Column("tunnel_epoch", BigInteger, nullable=True),
    # the model the device runs now and the one before it (migration 0008; no
    # foreign key: an agent may report a model this server never had)
    Column("current_model_id", Uuid, nullable=True),
    Column("current_model_sha256", Text, nullable=True),
    Column("previous_model_id", Uuid, nullable=True),
    Column("previous_model_sha256", Text, nullable=True),
)
_live_device = devices.c.deleted_at.is_(None)
# A deleted serial can be registered again: uniqueness holds for live rows only. Seed
# 000 made a live serial unique per owner; since organisations (0008) it is unique per
# organisation: the same dongle can be paired in two organisations, never twice in one.
Index(
    "uq_devices_org_serial_active",
    devices.c.org_id,
    devices.c.serial_number,
    unique=True,
    postgresql_where=_live_device,
    sqlite_where=_live_device,
)
Index(
    "idx_devices_org_active",
    devices.c.org_id,
    devices.c.created_at,
    postgresql_where=_live_device,
    sqlite_where=_live_device,
)
Index(
    "idx_devices_remote_status",
    devices.c.remote_status,
    postgresql_where=_live_device,
    sqlite_where=_live_device,
)

# The tags users set on devices (``key=value``; the built-in ones are computed, never
# stored). Selectors filter with EXISTS subqueries served by (key, value).
device_tags = Table(
    "device_tags",
    metadata,
    Column(
        "device_id",
        Uuid,
        ForeignKey("devices.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
Index("idx_device_tags_key_value", device_tags.c.key, device_tags.c.value)

pairing_tokens = Table(
    "pairing_tokens",
    metadata,
    Column("token_hash", Text, primary_key=True),  # sha256(plaintext), never the plaintext
    # The public, non-secret id (random; no relation to the hash): API, audit events.
    Column("public_id", Uuid, nullable=False),
    Column("user_id", Uuid, ForeignKey("users.id"), nullable=False),
    # no device until used: the organisation the device will be paired into
    Column("org_id", Uuid, ForeignKey("organizations.id"), nullable=False),
    Column("device_id", Uuid, ForeignKey("devices.id"), nullable=True),
    Column("kind", Text, nullable=False, server_default="pairing"),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)
_live_pairing = pairing_tokens.c.revoked_at.is_(None)
Index(
    "idx_pairing_tokens_user_active",
    pairing_tokens.c.user_id,
    postgresql_where=_live_pairing,
    sqlite_where=_live_pairing,
)
Index(
    "idx_pairing_tokens_org_active",
    pairing_tokens.c.org_id,
    postgresql_where=_live_pairing,
    sqlite_where=_live_pairing,
)
Index("idx_pairing_tokens_device", pairing_tokens.c.device_id)
Index("uq_pairing_tokens_public_id", pairing_tokens.c.public_id, unique=True)

session_tokens = Table(
    "session_tokens",
    metadata,
    Column("token_hash", Text, primary_key=True),
    Column("public_id", Uuid, nullable=False),  # as pairing_tokens.public_id
    Column("user_id", Uuid, ForeignKey("users.id"), nullable=False),
    Column("device_id", Uuid, ForeignKey("devices.id"), nullable=False),
    Column("parent_token_hash", Text, nullable=True),
    # The public id of the pairing token the chain started from (kept across renewals).
    Column("pairing_token_id", Uuid, nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)
_live_session = session_tokens.c.revoked_at.is_(None)
Index(
    "idx_session_tokens_user_active",
    session_tokens.c.user_id,
    postgresql_where=_live_session,
    sqlite_where=_live_session,
)
Index("idx_session_tokens_device", session_tokens.c.device_id)
Index("idx_session_tokens_parent", session_tokens.c.parent_token_hash)
Index("uq_session_tokens_public_id", session_tokens.c.public_id, unique=True)

deployments = Table(
    "deployments",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("owner_user_id", Uuid, ForeignKey("users.id"), nullable=False),
    Column("org_id", Uuid, ForeignKey("organizations.id"), nullable=False),
    Column("device_id", Uuid, ForeignKey("devices.id"), nullable=False),
    Column("model_id", Uuid, ForeignKey("models.id"), nullable=False),
    # pending | transferring | succeeded | stored | failed
    Column("status", Text, nullable=False, server_default="pending"),
    Column("error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("finished_at", UTCDateTime, nullable=True),
)
Index("idx_deployments_device", deployments.c.device_id, deployments.c.created_at)
Index("idx_deployments_model", deployments.c.model_id)
Index("idx_deployments_org", deployments.c.org_id, deployments.c.created_at)
#: The device's deployments still running: at most one (the admission rule).
DEPLOYMENT_ACTIVE = ("pending", "transferring")
_active_deployment = deployments.c.status.in_(DEPLOYMENT_ACTIVE)
Index(
    "uq_deployments_device_active",
    deployments.c.device_id,
    unique=True,
    postgresql_where=_active_deployment,
    sqlite_where=_active_deployment,
)

#: Small JSON: JSONB on PostgreSQL, JSON text on SQLite.
Detail = JSON().with_variant(postgresql.JSONB(), "postgresql")

# The audit trail: one row per action, written in the transaction of the change it
# records. No foreign keys: the trail outlives (and never blocks) what it names.
audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("occurred_at", UTCDateTime, nullable=False),
    # the user whose trail it is (None: visible to nobody through the API)
    Column("owner_id", Uuid, nullable=True),
    # the organisation whose trail it is (None: visible to nobody through the API)
    Column("org_id", Uuid, nullable=True),
    Column("actor_type", Text, nullable=False),  # user | device | system
    Column("actor_id", Uuid, nullable=True),
    Column("action", Text, nullable=False),  # e.g. device.paired
    Column("target_type", Text, nullable=False),
    Column("target_id", Text, nullable=True),
    # the device the action concerns, if any (its page shows the event)
    Column("device_id", Uuid, nullable=True),
    Column("client_addr", Text, nullable=True),
    Column("request_id", Text, nullable=True),
    Column("detail", Detail, nullable=False),
)
Index("idx_audit_events_org", audit_events.c.org_id, audit_events.c.occurred_at)
Index(
    "idx_audit_events_target",
    audit_events.c.target_type,
    audit_events.c.target_id,
    audit_events.c.occurred_at,
)
Index("idx_audit_events_device", audit_events.c.device_id, audit_events.c.occurred_at)
# retention: the oldest rows first
Index("idx_audit_events_occurred", audit_events.c.occurred_at)

# Web sessions when no Redis is configured (visiona.auth.sessions.SqlSessionStore).
# idle_expires_at = min(expires_at, last use + idle timeout): the row is dead once it
# is past, which the lazy sweep finds through its index.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", Text, primary_key=True),  # sha256(plaintext), never the plaintext
    Column("user_id", Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("idle_expires_at", UTCDateTime, nullable=False),
)
Index("idx_web_sessions_user", web_sessions.c.user_id)
Index("idx_web_sessions_idle_expires", web_sessions.c.idle_expires_at)

# Enrollment keys (migration 0010): reusable keys that pair many PCs. Stored by
# sha256 only; ``uses`` is counted by one conditional UPDATE (``uses < max_uses``).
enrollment_keys = Table(
    "enrollment_keys",
    metadata,
    Column("id", Uuid, primary_key=True),  # the public id (random; unrelated to the hash)
    Column("key_hash", Text, nullable=False),  # sha256(plaintext), never the plaintext
    # the scope of the row: an enrolled device joins this organisation
    Column("org_id", Uuid, ForeignKey("organizations.id"), nullable=False),
    Column("owner_user_id", Uuid, ForeignKey("users.id"), nullable=False),  # created by
    Column("name", Text, nullable=False),
    Column("max_uses", BigInteger, nullable=False),
    Column("uses", BigInteger, nullable=False, server_default=text("0")),
    Column("tags", Detail, nullable=False),
    Column("name_template", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)
Index("uq_enrollment_keys_key_hash", enrollment_keys.c.key_hash, unique=True)
Index("idx_enrollment_keys_org", enrollment_keys.c.org_id, enrollment_keys.c.created_at)

# Rollouts (migration 0010): a model sent to many devices in batches, driven by
# the scheduler under a lease; ``epoch`` is the fencing token of the scheduler that last
# drove it (a write of an older scheduler misses).
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("org_id", Uuid, ForeignKey("organizations.id"), nullable=False),  # the scope
    Column("owner_user_id", Uuid, ForeignKey("users.id"), nullable=False),  # created by
    # NULL for a rollback (each device returns to its own previous model)
    Column("model_id", Uuid, ForeignKey("models.id"), nullable=True),
    Column("selector", Text, nullable=True),  # NULL: an explicit list of devices
    Column("canary", BigInteger, nullable=False, server_default=text("0")),
    Column("batch", Text, nullable=False),  # "10" or "25%"
    Column("max_failure_percent", BigInteger, nullable=False),
    Column("deadline", UTCDateTime, nullable=True),
    # running | paused | completed | cancelled | failed
    Column("state", Text, nullable=False, server_default="running"),
    Column("reason", Text, nullable=True),
    Column("rollback_of", Uuid, nullable=True),
    # failed devices when last resumed: only failures after a resume pause it again
    Column("resumed_failed", BigInteger, nullable=False, server_default=text("0")),
    Column("epoch", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("finished_at", UTCDateTime, nullable=True),
)
Index("idx_rollouts_org", rollouts.c.org_id, rollouts.c.created_at)
ROLLOUT_OPEN = ("running", "paused")
_open_rollout = rollouts.c.state.in_(ROLLOUT_OPEN)
Index(
    "idx_rollouts_open",
    rollouts.c.state,
    postgresql_where=_open_rollout,
    sqlite_where=_open_rollout,
)

rollout_devices = Table(
    "rollout_devices",
    metadata,
    Column(
        "rollout_id",
        Uuid,
        ForeignKey("rollouts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("device_id", Uuid, ForeignKey("devices.id"), primary_key=True),
    # the model this device is sent (the rollout's, or its previous one for a rollback)
    Column("model_id", Uuid, nullable=True),
    Column("model_sha256", Text, nullable=True),
    # NULL: not in a batch yet; 0 is the canary batch
    Column("batch", BigInteger, nullable=True),
    # queued | waiting | transferring | succeeded | failed | skipped | cancelled
    Column("state", Text, nullable=False, server_default="queued"),
    Column("error", Text, nullable=True),
    Column("deployment_id", Uuid, nullable=True),
    Column("attempts", BigInteger, nullable=False, server_default=text("0")),
    Column("epoch", BigInteger, nullable=True),  # the scheduler's epoch that dispatched it
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=_now()),
)
Index("idx_rollout_devices_state", rollout_devices.c.rollout_id, rollout_devices.c.state)
Index("idx_rollout_devices_device", rollout_devices.c.device_id)

# Webhook endpoints of an organisation (migration 0012, issue 25). ``secret`` is the
# Standard Webhooks signing key (``whsec_…``): the server signs with it, so it is kept
# as issued (it is shown once through the API and never logged). ``events`` is the
# space-separated, sorted list shown to people; matching uses webhook_subscriptions.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("org_id", Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("created_by", Uuid, nullable=True),  # the user or API key that created it
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("secret", Text, nullable=False),
    Column("events", Text, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default=true()),
    Column("disabled_reason", Text, nullable=True),
    Column("disabled_at", UTCDateTime, nullable=True),
    # the first failed attempt of the current run of failures (None: last one succeeded)
    Column("failing_since", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False, server_default=_now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=_now()),
)
Index("idx_webhook_endpoints_org", webhook_endpoints.c.org_id, webhook_endpoints.c.created_at)

# One row per event type an endpoint subscribes to: an action (``device.renamed``), a
# family (``device.*``) or everything (``*``). The outbox write matches on it.
webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column(
        "endpoint_id",
        Uuid,
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("event_type", Text, primary_key=True),
)

# The outbox: one row per (event, endpoint), written in the transaction of the change
# (visiona.audit.outbox). ``seq`` orders an endpoint's deliveries; ``event_id`` is the
# ``webhook-id`` receivers de-duplicate on. A node claims a due row by setting
# ``lease_owner``/``lease_until``; an expired lease is claimable again.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column(
        "seq",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column(
        "endpoint_id",
        Uuid,
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("event_id", Uuid, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("payload", Detail, nullable=False),  # the JSON body, as sent
    # pending | delivered | failed (every attempt of the schedule failed)
    Column("state", Text, nullable=False, server_default="pending"),
    Column("attempts", BigInteger, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", Text, nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("last_attempt_at", UTCDateTime, nullable=True),
    Column("last_status", BigInteger, nullable=True),  # the receiver's HTTP status
    Column("last_latency_ms", BigInteger, nullable=True),
    Column("last_response", Text, nullable=True),  # the first 1 KiB of the answer
    Column("last_error", Text, nullable=True),  # why no answer (refused, timeout, …)
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)
# an endpoint's queue, in order (head of line: its oldest pending row)
Index(
    "idx_webhook_deliveries_endpoint",
    webhook_deliveries.c.endpoint_id,
    webhook_deliveries.c.state,
    webhook_deliveries.c.seq,
)
# due rows, for the dispatcher
_pending_delivery = webhook_deliveries.c.state == "pending"
Index(
    "idx_webhook_deliveries_due",
    webhook_deliveries.c.next_attempt_at,
    postgresql_where=_pending_delivery,
    sqlite_where=_pending_delivery,
)
