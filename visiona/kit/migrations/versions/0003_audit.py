"""The audit trail (``audit_events``) and public, non-secret ids for tokens.

Tokens were known by their sha256 (``token_hash``) in the API; an id that names a
token in an audit event or a response must not be its hash. Each token gets a random
``public_id`` (existing rows are given one here), and a session token the public id
of the pairing token its chain started from (``pairing_token_id``, filled here by
walking ``parent_token_hash``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: SQLite's batch mode rebuilds a table from its reflection; without this it also reflects
#: every table a foreign key refers to (users), whose expression index (lower(email))
#: SQLAlchemy cannot reflect and warns about. The rebuild needs only the table itself.
_NO_REFERENTS = {"resolve_fks": False}

TS = sa.DateTime(timezone=True)
DETAIL = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# How many rows one backfill statement updates (executemany).
_BATCH = 1000
# A renewal chain is at most this deep when the backfill walks it (one hop per pass).
_MAX_CHAIN = 10_000


def _give_public_ids(table: str) -> None:
    conn = op.get_bind()
    t = sa.table(table, sa.column("token_hash", sa.Text()), sa.column("public_id", sa.Uuid()))
    stmt = (
        sa.update(t).where(t.c.token_hash == sa.bindparam("h")).values(public_id=sa.bindparam("p"))
    )
    while True:
        hashes = (
            conn.execute(sa.select(t.c.token_hash).where(t.c.public_id.is_(None)).limit(_BATCH))
            .scalars()
            .all()
        )
        if not hashes:
            return
        conn.execute(stmt, [{"h": h, "p": uuid.uuid4()} for h in hashes])


def _link_pairing_ids() -> None:
    """``session_tokens.pairing_token_id`` from the parent: a pairing token, or a session's."""
    conn = op.get_bind()
    conn.execute(
        sa.text(
            "UPDATE session_tokens SET pairing_token_id = ("
            " SELECT p.public_id FROM pairing_tokens p"
            " WHERE p.token_hash = session_tokens.parent_token_hash)"
            " WHERE pairing_token_id IS NULL"
        )
    )
    for _ in range(_MAX_CHAIN):
        changed = conn.execute(
            sa.text(
                "UPDATE session_tokens SET pairing_token_id = ("
                " SELECT s.pairing_token_id FROM session_tokens s"
                " WHERE s.token_hash = session_tokens.parent_token_hash)"
                " WHERE pairing_token_id IS NULL AND EXISTS ("
                " SELECT 1 FROM session_tokens s"
                " WHERE s.token_hash = session_tokens.parent_token_hash"
                " AND s.pairing_token_id IS NOT NULL)"
            )
        ).rowcount
        if not changed:
            return


def upgrade() -> None:
    for table in ("pairing_tokens", "session_tokens"):
        with op.batch_alter_table(table, reflect_kwargs=_NO_REFERENTS) as batch:
            batch.add_column(sa.Column("public_id", sa.Uuid(), nullable=True))
            if table == "session_tokens":
                batch.add_column(sa.Column("pairing_token_id", sa.Uuid(), nullable=True))
        _give_public_ids(table)
    _link_pairing_ids()
    for table in ("pairing_tokens", "session_tokens"):
        with op.batch_alter_table(table, reflect_kwargs=_NO_REFERENTS) as batch:
            batch.alter_column("public_id", existing_type=sa.Uuid(), nullable=False)
        op.create_index(f"uq_{table}_public_id", table, ["public_id"], unique=True)

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("actor_type", sa.Text(), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target_type", sa.Text(), nullable=False),
        sa.Column("target_id", sa.Text(), nullable=True),
        sa.Column("device_id", sa.Uuid(), nullable=True),
        sa.Column("client_addr", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("detail", DETAIL, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("idx_audit_events_owner", "audit_events", ["owner_id", "occurred_at"])
    op.create_index(
        "idx_audit_events_target", "audit_events", ["target_type", "target_id", "occurred_at"]
    )
    op.create_index("idx_audit_events_device", "audit_events", ["device_id", "occurred_at"])
    op.create_index("idx_audit_events_occurred", "audit_events", ["occurred_at"])


def downgrade() -> None:
    op.drop_table("audit_events")
    for table in ("session_tokens", "pairing_tokens"):
        op.drop_index(f"uq_{table}_public_id", table_name=table)
        with op.batch_alter_table(table, reflect_kwargs=_NO_REFERENTS) as batch:
            if table == "session_tokens":
                batch.drop_column("pairing_token_id")
            batch.drop_column("public_id")
