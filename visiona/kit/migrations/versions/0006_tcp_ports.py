"""The TCP ports a device's agent allows (`visiona agent --allow-port`).

- ``devices.tcp_ports``: a JSON list of port numbers as the agent last reported it
  (``POST /agent/status``); NULL when the agent never reported (an older agent). The
  TCP forward answers 403 before its WebSocket upgrade for a port not in a known list,
  and the console shows the command to reach the listed ports.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


#: A batch rebuild (SQLite) reflects only its own table: reflecting the tables its foreign
#: keys name warned about the expression index uq_users_email_lower.
_NO_REFERENTS = {"resolve_fks": False}


def upgrade() -> None:
    with op.batch_alter_table("devices", reflect_kwargs=_NO_REFERENTS) as batch:
        batch.add_column(
            sa.Column(
                "tcp_ports",
                sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", reflect_kwargs=_NO_REFERENTS) as batch:
        batch.drop_column("tcp_ports")
