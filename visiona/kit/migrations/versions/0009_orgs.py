"""Organisations own everything (issue 22): ``organizations``, ``memberships``,
``invitations``, and ``org_id`` on devices, models, pairing tokens, deployments and
audit events.

Every existing user gets a personal organisation (``personal = true``) with an
``owner`` membership, and their rows move into it (``org_id`` = the personal
organisation of ``owner_user_id`` / ``user_id`` / ``owner_id``). ``owner_user_id``
stays and keeps meaning "created by". Session tokens belong to an organisation through
their device; pairing tokens have no device until used, so they carry ``org_id``.

The live-serial rule of seed 000 ("a serial is registered once among live devices")
moves from per owner to per organisation: ``uq_devices_org_serial_active``. Indexes
that served the per-owner lists move to ``org_id`` likewise.

Downgrade drops the organisations; the rows keep their ``owner_user_id`` and are
therefore the owner's again. A user who registered one serial in two of their
organisations cannot be downgraded (the per-owner unique index refuses it).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

#: A batch rebuild (SQLite) reflects only its own table: reflecting the tables its foreign
#: keys name warned about the expression index uq_users_email_lower.
_NO_REFERENTS = {"resolve_fks": False}

TS = sa.DateTime(timezone=True)
_LIVE = sa.text("deleted_at IS NULL")
_BATCH = 1000

#: table -> the column naming the user whose personal organisation the row moves into
_OWNED = {
    "devices": "owner_user_id",
    "models": "owner_user_id",
    "pairing_tokens": "user_id",
    "deployments": "owner_user_id",
    "audit_events": "owner_id",
}
#: audit events of nobody (owner_id NULL) stay visible to nobody: org_id NULL
_NULLABLE = {"audit_events"}

_MODEL_INDEXES = {
    "created_at": ("idx_models_owner_active", "idx_models_org_active"),
    "target_chip": ("idx_models_owner_chip_active", "idx_models_org_chip_active"),
    "source": ("idx_models_owner_source_active", "idx_models_org_source_active"),
}


def _create_tables() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("personal", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_organizations"),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name="fk_organizations_created_by_users"
        ),
    )
    op.create_table(
        "memberships",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("org_id", "user_id", name="pk_memberships"),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name="fk_memberships_org_id_organizations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_memberships_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("idx_memberships_user", "memberships", ["user_id"])
    op.create_table(
        "invitations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("accepted_at", TS, nullable=True),
        sa.Column("accepted_by", sa.Uuid(), nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_invitations"),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name="fk_invitations_org_id_organizations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name="fk_invitations_created_by_users"
        ),
        sa.ForeignKeyConstraint(
            ["accepted_by"], ["users.id"], name="fk_invitations_accepted_by_users"
        ),
    )
    op.create_index("uq_invitations_token_hash", "invitations", ["token_hash"], unique=True)
    op.create_index("idx_invitations_org", "invitations", ["org_id", "created_at"])


def _personal_orgs() -> None:
    """One personal organisation and owner membership per existing user."""
    conn = op.get_bind()
    users = sa.table(
        "users", sa.column("id", sa.Uuid()), sa.column("email", sa.Text()), sa.column("name")
    )
    orgs = sa.table(
        "organizations",
        sa.column("id", sa.Uuid()),
        sa.column("name", sa.Text()),
        sa.column("personal", sa.Boolean()),
        sa.column("created_by", sa.Uuid()),
    )
    members = sa.table(
        "memberships",
        sa.column("org_id", sa.Uuid()),
        sa.column("user_id", sa.Uuid()),
        sa.column("role", sa.Text()),
    )
    last: uuid.UUID | None = None
    while True:
        query = sa.select(users.c.id, users.c.email, users.c.name).order_by(users.c.id)
        if last is not None:
            query = query.where(users.c.id > last)
        rows = conn.execute(query.limit(_BATCH)).all()
        if not rows:
            return
        org_rows = []
        member_rows = []
        for user_id, email, name in rows:
            org_id = uuid.uuid4()
            label = (name or "").strip() or str(email).split("@", 1)[0]
            org_rows.append(
                {
                    "id": org_id,
                    "name": f"{label} (personal)",
                    "personal": True,
                    "created_by": user_id,
                }
            )
            member_rows.append({"org_id": org_id, "user_id": user_id, "role": "owner"})
        conn.execute(sa.insert(orgs), org_rows)
        conn.execute(sa.insert(members), member_rows)
        last = rows[-1][0]


def _move_rows(table: str, owner_column: str) -> None:
    """``org_id`` = the personal organisation of the row's owner (one statement)."""
    t = sa.table(table, sa.column("org_id", sa.Uuid()), sa.column(owner_column, sa.Uuid()))
    m = sa.table("memberships", sa.column("org_id", sa.Uuid()), sa.column("user_id", sa.Uuid()))
    o = sa.table("organizations", sa.column("id", sa.Uuid()), sa.column("personal", sa.Boolean()))
    personal = (
        sa.select(m.c.org_id)
        .join(o, o.c.id == m.c.org_id)
        .where(m.c.user_id == t.c[owner_column])
        .where(o.c.personal.is_(True))
        .limit(1)
        .scalar_subquery()
    )
    op.get_bind().execute(sa.update(t).values(org_id=personal))


def upgrade() -> None:
    _create_tables()
    _personal_orgs()
    op.drop_index("uq_devices_owner_serial_active", table_name="devices")
    op.drop_index("idx_devices_owner_active", table_name="devices")
    for old, _new in _MODEL_INDEXES.values():
        op.drop_index(old, table_name="models")
    op.drop_index("idx_audit_events_owner", table_name="audit_events")
    for table in _OWNED:
        with op.batch_alter_table(table, reflect_kwargs=_NO_REFERENTS) as batch:
            batch.add_column(sa.Column("org_id", sa.Uuid(), nullable=True))
    for table, owner in _OWNED.items():
        _move_rows(table, owner)
    for table in _OWNED:
        with op.batch_alter_table(table, reflect_kwargs=_NO_REFERENTS) as batch:
            if table not in _NULLABLE:
                batch.alter_column("org_id", existing_type=sa.Uuid(), nullable=False)
                batch.create_foreign_key(
                    f"fk_{table}_org_id_organizations", "organizations", ["org_id"], ["id"]
                )
    op.create_index(
        "uq_devices_org_serial_active",
        "devices",
        ["org_id", "serial_number"],
        unique=True,
        postgresql_where=_LIVE,
        sqlite_where=_LIVE,
    )
    op.create_index(
        "idx_devices_org_active",
        "devices",
        ["org_id", "created_at"],
        postgresql_where=_LIVE,
        sqlite_where=_LIVE,
    )
    for column, (_old, new) in _MODEL_INDEXES.items():
        op.create_index(
            new, "models", ["org_id", column], postgresql_where=_LIVE, sqlite_where=_LIVE
        )
    op.create_index(
        "idx_pairing_tokens_org_active",
        "pairing_tokens",
        ["org_id"],
        postgresql_where=sa.text("revoked_at IS NULL"),
        sqlite_where=sa.text("revoked_at IS NULL"),
    )
    op.create_index("idx_deployments_org", "deployments", ["org_id", "created_at"])
    op.create_index("idx_audit_events_org", "audit_events", ["org_id", "occurred_at"])


def downgrade() -> None:
    op.drop_index("idx_audit_events_org", table_name="audit_events")
    op.drop_index("idx_deployments_org", table_name="deployments")
    op.drop_index("idx_pairing_tokens_org_active", table_name="pairing_tokens")
    for _old, new in _MODEL_INDEXES.values():
        op.drop_index(new, table_name="models")
    op.drop_index("idx_devices_org_active", table_name="devices")
    op.drop_index("uq_devices_org_serial_active", table_name="devices")
    for table in _OWNED:
        with op.batch_alter_table(table, reflect_kwargs=_NO_REFERENTS) as batch:
            if table not in _NULLABLE:
                batch.drop_constraint(f"fk_{table}_org_id_organizations", type_="foreignkey")
            batch.drop_column("org_id")
    op.create_index("idx_audit_events_owner", "audit_events", ["owner_id", "occurred_at"])
    for column, (old, _new) in _MODEL_INDEXES.items():
        op.create_index(
            old, "models", ["owner_user_id", column], postgresql_where=_LIVE, sqlite_where=_LIVE
        )
    op.create_index(
        "idx_devices_owner_active",
        "devices",
        ["owner_user_id", "created_at"],
        postgresql_where=_LIVE,
        sqlite_where=_LIVE,
    )
    op.create_index(
        "uq_devices_owner_serial_active",
        "devices",
        ["owner_user_id", "serial_number"],
        unique=True,
        postgresql_where=_LIVE,
        sqlite_where=_LIVE,
    )
    op.drop_index("idx_invitations_org", table_name="invitations")
    op.drop_index("uq_invitations_token_hash", table_name="invitations")
    op.drop_table("invitations")
    op.drop_index("idx_memberships_user", table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("organizations")
