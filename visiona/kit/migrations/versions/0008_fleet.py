"""The fleet: device tags, and the model each device runs (issue 23).

- ``device_tags``: one row per ``key=value`` tag a user set on a device; primary key
  ``(device_id, key)`` (one value per key), ``idx_device_tags_key_value (key, value)``
  serves the selectors' ``EXISTS`` subqueries (``site=lab``, ``site in (a,b)``). A
  table, not a JSON column: the same plain SQL filters on SQLite and PostgreSQL, and a
  B-tree index answers "which devices have site=lab" on both.
- ``devices.current_model_id`` / ``current_model_sha256``: the model the device runs
  now (set in the transaction that records a successful deployment, or from the
  agent's own report); ``previous_model_id`` / ``previous_model_sha256``: the one it
  ran before (a rollback's target). No foreign key: an agent may report a model this
  server never had (or deleted).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


#: A batch rebuild (SQLite) reflects only its own table: reflecting the tables its foreign
#: keys name warned about the expression index uq_users_email_lower.
_NO_REFERENTS = {"resolve_fks": False}
_MODEL_COLUMNS = (
    ("current_model_id", sa.Uuid()),
    ("current_model_sha256", sa.Text()),
    ("previous_model_id", sa.Uuid()),
    ("previous_model_sha256", sa.Text()),
)


def upgrade() -> None:
    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name="fk_device_tags_device_id_devices",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", "key", name="pk_device_tags"),
    )
    op.create_index("idx_device_tags_key_value", "device_tags", ["key", "value"])
    with op.batch_alter_table("devices", reflect_kwargs=_NO_REFERENTS) as batch:
        for name, type_ in _MODEL_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", reflect_kwargs=_NO_REFERENTS) as batch:
        for name, _ in reversed(_MODEL_COLUMNS):
            batch.drop_column(name)
    op.drop_index("idx_device_tags_key_value", table_name="device_tags")
    op.drop_table("device_tags")
