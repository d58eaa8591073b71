"""Schema migrations through Alembic's command API (never a shelled-out `alembic`).

These functions are synchronous and start their own event loop inside Alembic's
environment: call them before the server's loop starts, or from a worker thread.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.engine import URL, make_url

SCRIPT_LOCATION = "visiona.kit:migrations"


def alembic_config(url: URL | str) -> Config:
    """An Alembic config for the packaged migrations, pointed at ``url``."""
    _ensure_sqlite_dir(url)
    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["url"] = url
    return config


def upgrade(url: URL | str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: URL | str, revision: str = "-1") -> None:
    """Revert migrations down to ``revision`` (one step by default, or ``base``)."""
    command.downgrade(alembic_config(url), revision)


def upgrade_on_connection(connection: Connection, revision: str = "head") -> None:
    """Apply migrations on an open synchronous connection (use ``run_sync``)."""
    config = alembic_config("sqlite://")
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _ensure_sqlite_dir(url: URL | str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class MigrationStatus:
    """Where the database stands against the packaged migrations."""

    current: str | None
    head: str
    pending: tuple[str, ...]

    @property
    def up_to_date(self) -> bool:
        """Whether no migration is pending."""
        return not self.pending


def head_revision() -> str:
    """The newest packaged revision."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no migrations packaged")
    return head


def status_from_connection(connection: Connection) -> MigrationStatus:
    """Compute the status on an open synchronous connection (use ``run_sync``)."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    current = MigrationContext.configure(connection).get_current_revision()
    head = script.get_current_head() or ""
    pending = [
        rev.revision
        for rev in script.iterate_revisions(head, current or "base")
        if rev.revision != current
    ]
    pending.reverse()
    return MigrationStatus(current=current, head=head, pending=tuple(pending))
