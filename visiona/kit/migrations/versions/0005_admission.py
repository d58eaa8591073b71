"""Device-aware admission: one active deployment per device, and the agent's busy flag.

- ``uq_deployments_device_active``: a partial unique index on ``deployments.device_id``
  over the rows still ``pending`` or ``transferring``; two concurrent deployments to
  one device cannot both be recorded (the second insert does nothing, the API
  answers 409 ``deployment_in_progress``), on SQLite and PostgreSQL alike.
- ``devices.busy``: what the agent last reported of its local service (reset to
  false when a tunnel comes up).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: SQLite's batch mode rebuilds a table from its reflection; without this it also reflects
#: every table a foreign key refers to (users), whose expression index (lower(email))
#: SQLAlchemy cannot reflect and warns about. The rebuild needs only the table itself.
_NO_REFERENTS = {"resolve_fks": False}

_ACTIVE = sa.text("status IN ('pending', 'transferring')")


def upgrade() -> None:
    with op.batch_alter_table("devices", reflect_kwargs=_NO_REFERENTS) as batch:
        batch.add_column(sa.Column("busy", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index(
        "uq_deployments_device_active",
        "deployments",
        ["device_id"],
        unique=True,
        postgresql_where=_ACTIVE,
        sqlite_where=_ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_deployments_device_active", table_name="deployments")
    with op.batch_alter_table("devices", reflect_kwargs=_NO_REFERENTS) as batch:
        batch.drop_column("busy")
