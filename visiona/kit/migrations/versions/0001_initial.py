"""Initial schema: users, models, devices, pairing_tokens, session_tokens.

Mirrors the seeds (000 devices, 002 tokens): partial indexes on live rows, a
partial unique (owner, serial) on live devices, unique lower(email).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
LABELS = sa.JSON().with_variant(postgresql.ARRAY(sa.Text()), "postgresql")
LIVE = sa.text("deleted_at IS NULL")
UNREVOKED = sa.text("revoked_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), server_default="", nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
    )
    op.create_index("uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True)

    op.create_table(
        "models",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("target_chip", sa.Text(), nullable=False),
        sa.Column("file_size", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), server_default="uploaded", nullable=False),
        sa.Column("labels", LABELS, nullable=True),
        sa.Column("storage_key", sa.Text(), nullable=True),
        sa.Column("faa_object_key", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("uploaded_at", TS, nullable=True),
        sa.Column("deleted_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_user_id"], ["users.id"], name="fk_models_owner_user_id_users"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
    )
    for name, cols in (
        ("idx_models_owner_active", ["owner_user_id", "created_at"]),
        ("idx_models_owner_chip_active", ["owner_user_id", "target_chip"]),
        ("idx_models_owner_source_active", ["owner_user_id", "source"]),
    ):
        op.create_index(name, "models", cols, postgresql_where=LIVE, sqlite_where=LIVE)

    op.create_table(
        "devices",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("device_type", sa.Text(), nullable=True),
        sa.Column("serial_number", sa.Text(), nullable=True),
        sa.Column("remote_status", sa.Text(), server_default="offline", nullable=False),
        sa.Column("last_seen_at", TS, nullable=True),
        sa.Column("last_connected_at", TS, nullable=True),
        sa.Column("status", sa.Text(), server_default="unknown", nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("paired_at", TS, nullable=True),
        sa.Column("deleted_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_user_id"], ["users.id"], name="fk_devices_owner_user_id_users"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
    )
    op.create_index(
        "uq_devices_owner_serial_active",
        "devices",
        ["owner_user_id", "serial_number"],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    op.create_index(
        "idx_devices_owner_active",
        "devices",
        ["owner_user_id", "created_at"],
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    op.create_index(
        "idx_devices_remote_status",
        "devices",
        ["remote_status"],
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )

    op.create_table(
        "pairing_tokens",
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.Text(), server_default="pairing", nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("used_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_pairing_tokens_device_id_devices"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_pairing_tokens_user_id_users"),
        sa.PrimaryKeyConstraint("token_hash", name="pk_pairing_tokens"),
    )
    op.create_index(
        "idx_pairing_tokens_user_active",
        "pairing_tokens",
        ["user_id"],
        postgresql_where=UNREVOKED,
        sqlite_where=UNREVOKED,
    )
    op.create_index("idx_pairing_tokens_device", "pairing_tokens", ["device_id"])

    op.create_table(
        "session_tokens",
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=False),
        sa.Column("parent_token_hash", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_session_tokens_device_id_devices"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_session_tokens_user_id_users"),
        sa.PrimaryKeyConstraint("token_hash", name="pk_session_tokens"),
    )
    op.create_index(
        "idx_session_tokens_user_active",
        "session_tokens",
        ["user_id"],
        postgresql_where=UNREVOKED,
        sqlite_where=UNREVOKED,
    )
    op.create_index("idx_session_tokens_device", "session_tokens", ["device_id"])
    op.create_index("idx_session_tokens_parent", "session_tokens", ["parent_token_hash"])


def downgrade() -> None:
    op.drop_table("session_tokens")
    op.drop_table("pairing_tokens")
    op.drop_table("devices")
    op.drop_table("models")
    op.drop_table("users")
