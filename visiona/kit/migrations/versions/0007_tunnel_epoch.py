"""Tunnel generations: ``devices.tunnel_epoch``, the epoch of the tunnel that last came up.

A tunnel's epoch (nanoseconds since the epoch when it came up, also written in the
registry's lease) is carried in every status write: ``online`` applies only over an
older epoch, ``reconnecting``/``offline`` and the batched ``last_seen_at`` only to the
same epoch. A late "offline" from an old tunnel (another node, a slow write) never
overwrites the new tunnel's "online". Null: no tunnel since the column was added.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


#: A batch rebuild (SQLite) reflects only its own table: reflecting the tables its foreign
#: keys name warned about the expression index uq_users_email_lower.
_NO_REFERENTS = {"resolve_fks": False}


def upgrade() -> None:
    with op.batch_alter_table("devices", reflect_kwargs=_NO_REFERENTS) as batch:
        batch.add_column(sa.Column("tunnel_epoch", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", reflect_kwargs=_NO_REFERENTS) as batch:
        batch.drop_column("tunnel_epoch")
