"""Web sessions in SQL: the store used when no Redis is configured.

One row per signed-in browser or CLI, keyed by the token's sha256, with the
absolute deadline and the idle deadline (``min(expires_at, last use + idle)``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("idle_expires_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_web_sessions_user_id_users",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_web_sessions"),
    )
    op.create_index("idx_web_sessions_user", "web_sessions", ["user_id"])
    op.create_index("idx_web_sessions_idle_expires", "web_sessions", ["idle_expires_at"])


def downgrade() -> None:
    op.drop_table("web_sessions")
