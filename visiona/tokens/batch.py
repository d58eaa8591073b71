"""Session checks of a connect storm, answered by one query per batch.

Every tunnel upgrade checks its session token before the handshake. One at a time,
10,000 agents coming back at once meant 10,000 round trips through the few driver
connections of the hot-read lane, on an event loop already busy with the handshakes:
the waits passed the lane's timeout and thousands of upgrades were answered 503
``database_unavailable``. :class:`SessionChecks` runs one statement for all the checks
waiting (up to :data:`MAX_BATCH` tokens; :class:`visiona.kit.coalesce.Coalescer`).

PostgreSQL only (the tokens travel as one array parameter); on SQLite each check is its
own read (an embedded node holds a few tunnels, and its reads cost no round trip).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from visiona.kit.clock import utcnow
from visiona.kit.coalesce import Coalescer
from visiona.tokens import repository

if TYPE_CHECKING:
    from visiona.kit.database import Database
    from visiona.tokens.repository import ValidSession

#: The most tokens one statement checks.
MAX_BATCH = 500


class SessionChecks:
    """Check session-token hashes against the database, batching concurrent checks."""

    def __init__(self, db: Database) -> None:
        """Check against ``db`` (batched on PostgreSQL)."""
        self._db = db
        self._batched = db.dialect == "postgresql"
        self._batches: Coalescer[str, ValidSession | None] = Coalescer(
            self._lookup, default=None, max_batch=MAX_BATCH
        )
        self._single = 0

    @property
    def statements(self) -> int:
        """Statements run since start (tests and metrics)."""
        return self._batches.batches + self._single

    @property
    def checked(self) -> int:
        """Checks answered since start."""
        return self._batches.asked + self._single

    async def find(self, token_hash: str) -> ValidSession | None:
        """The session token ``token_hash`` if it holds (see
        :func:`visiona.tokens.repository.find_valid_session`); a database failure raises
        as that read would."""
        if not self._batched:
            self._single += 1
            return await repository.find_valid_session(self._db, token_hash, utcnow())
        return await self._batches.ask(token_hash)

    async def _lookup(self, hashes: list[str]) -> dict[str, ValidSession]:
        found = await repository.find_valid_sessions(self._db, hashes, utcnow())
        return {session.token_hash: session for session in found}
