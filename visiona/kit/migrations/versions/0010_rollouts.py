"""Enrollment keys and rollouts (issue 23, items 2, 4 and 5).

- ``enrollment_keys``: reusable keys that pair many PCs (``vek_…``, stored as sha256 in
  ``key_hash``, unique). ``uses`` is counted with one conditional UPDATE
  (``uses < max_uses`` and unexpired and unrevoked), so concurrent enrolments never
  exceed ``max_uses``. ``tags`` (JSON) are applied to each enrolled device.
- ``rollouts``: one model sent to many devices in batches (``canary``, ``batch`` as a
  count or ``N%``, ``max_failure_percent``, ``deadline``); ``state`` running | paused |
  completed | cancelled | failed with ``reason``; ``epoch`` is the fencing token of the
  scheduler that last drove it. ``idx_rollouts_open`` serves the scheduler's scan.
- ``rollout_devices``: one row per (rollout, device): its batch, state, the deployment
  that carries it and the epoch of the scheduler that dispatched it.

Keys and rollouts belong to an organisation (``org_id``, NOT NULL, the scope: every
read and write filters by it); ``owner_user_id`` says who created them. The tables are
new, so there is nothing to backfill. ``rollout_devices`` is scoped through its rollout.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_DETAIL = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_OPEN = sa.text("state IN ('running', 'paused')")


def _stamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=None if nullable else sa.func.now(),
    )


def upgrade() -> None:
    op.create_table(
        "enrollment_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("owner_user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("max_uses", sa.BigInteger(), nullable=False),
        sa.Column("uses", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("tags", _DETAIL, nullable=False),
        sa.Column("name_template", sa.Text(), nullable=True),
        _stamp("created_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _stamp("last_used_at", nullable=True),
        _stamp("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name="fk_enrollment_keys_org_id_organizations"
        ),
        sa.ForeignKeyConstraint(
            ["owner_user_id"], ["users.id"], name="fk_enrollment_keys_owner_user_id_users"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_enrollment_keys"),
    )
    op.create_index("uq_enrollment_keys_key_hash", "enrollment_keys", ["key_hash"], unique=True)
    op.create_index("idx_enrollment_keys_org", "enrollment_keys", ["org_id", "created_at"])
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("owner_user_id", sa.Uuid(), nullable=False),
        sa.Column("model_id", sa.Uuid(), nullable=True),
        sa.Column("selector", sa.Text(), nullable=True),
        sa.Column("canary", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("batch", sa.Text(), nullable=False),
        sa.Column("max_failure_percent", sa.BigInteger(), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.Text(), nullable=False, server_default="running"),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("rollback_of", sa.Uuid(), nullable=True),
        sa.Column("resumed_failed", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("epoch", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        _stamp("created_at"),
        _stamp("updated_at"),
        _stamp("finished_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name="fk_rollouts_org_id_organizations"
        ),
        sa.ForeignKeyConstraint(
            ["owner_user_id"], ["users.id"], name="fk_rollouts_owner_user_id_users"
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_rollouts_model_id_models"),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
    )
    op.create_index("idx_rollouts_org", "rollouts", ["org_id", "created_at"])
    op.create_index(
        "idx_rollouts_open",
        "rollouts",
        ["state"],
        postgresql_where=_OPEN,
        sqlite_where=_OPEN,
    )
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=False),
        sa.Column("model_id", sa.Uuid(), nullable=True),
        sa.Column("model_sha256", sa.Text(), nullable=True),
        sa.Column("batch", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False, server_default="queued"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("deployment_id", sa.Uuid(), nullable=True),
        sa.Column("attempts", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
        _stamp("created_at"),
        _stamp("updated_at"),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name="fk_rollout_devices_rollout_id_rollouts",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_rollout_devices_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name="pk_rollout_devices"),
    )
    op.create_index("idx_rollout_devices_state", "rollout_devices", ["rollout_id", "state"])
    op.create_index("idx_rollout_devices_device", "rollout_devices", ["device_id"])


def downgrade() -> None:
    op.drop_index("idx_rollout_devices_device", table_name="rollout_devices")
    op.drop_index("idx_rollout_devices_state", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    op.drop_index("idx_rollouts_open", table_name="rollouts")
    op.drop_index("idx_rollouts_org", table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_index("idx_enrollment_keys_org", table_name="enrollment_keys")
    op.drop_index("uq_enrollment_keys_key_hash", table_name="enrollment_keys")
    op.drop_table("enrollment_keys")
