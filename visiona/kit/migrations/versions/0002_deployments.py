"""Deployments: one row per model pushed to a device through its tunnel.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_user_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=False),
        sa.Column("model_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_user_id"], ["users.id"], name="fk_deployments_owner_user_id_users"
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_deployments_device_id_devices"
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_deployments_model_id_models"),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
    )
    op.create_index("idx_deployments_device", "deployments", ["device_id", "created_at"])
    op.create_index("idx_deployments_model", "deployments", ["model_id"])


def downgrade() -> None:
    op.drop_table("deployments")
