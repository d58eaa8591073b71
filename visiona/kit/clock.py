"""The one clock of the server: aware UTC, bound into SQL instead of the database's ``now()``.

Every "now" a repository compares with or writes comes from here, so SQLite's text
timestamps and PostgreSQL's ``timestamptz`` see the same instant.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)
