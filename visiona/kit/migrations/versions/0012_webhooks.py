"""Webhooks of an organisation and their outbox (issue 25): ``webhook_endpoints``,
``webhook_subscriptions``, ``webhook_deliveries``.

- ``webhook_endpoints``: a receiver URL, its Standard Webhooks signing ``secret``
  (``whsec_…``; the server signs with it, so it is kept as issued and shown once),
  ``enabled`` with why and when it was disabled, ``failing_since`` (the first failure
  of the current run of failures).
- ``webhook_subscriptions``: the event types an endpoint wants (an action, a family
  such as ``device.*``, or ``*``); the outbox write matches on them.
- ``webhook_deliveries``: the outbox, one row per (event, endpoint), written in the
  transaction of the change that caused the event. ``seq`` orders an endpoint's queue;
  ``event_id`` is the ``webhook-id``; ``lease_owner``/``lease_until`` make one node the
  only sender of an attempt; the ``last_*`` columns are the delivery log.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
_DETAIL = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_PENDING = sa.text("state = 'pending'")


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("disabled_at", TS, nullable=True),
        sa.Column("failing_since", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_endpoints"),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name="fk_webhook_endpoints_org_id_organizations",
            ondelete="CASCADE",
        ),
    )
    op.create_index("idx_webhook_endpoints_org", "webhook_endpoints", ["org_id", "created_at"])
    op.create_table(
        "webhook_subscriptions",
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint_id", "event_type", name="pk_webhook_subscriptions"),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name="fk_webhook_subscriptions_endpoint_id_webhook_endpoints",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("payload", _DETAIL, nullable=False),
        sa.Column("state", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("last_attempt_at", TS, nullable=True),
        sa.Column("last_status", sa.BigInteger(), nullable=True),
        sa.Column("last_latency_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_response", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_webhook_deliveries"),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name="fk_webhook_deliveries_endpoint_id_webhook_endpoints",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "idx_webhook_deliveries_endpoint",
        "webhook_deliveries",
        ["endpoint_id", "state", "seq"],
    )
    op.create_index(
        "idx_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("idx_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_index("idx_webhook_deliveries_endpoint", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_subscriptions")
    op.drop_index("idx_webhook_endpoints_org", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
