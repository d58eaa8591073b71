"""Session checks of a connect storm, answered by one query per batch.

Every tunnel upgrade checks its session token before the handshake. One at a time,
10,000 agents coming back at once meant 10,000 round trips through the few driver
connections of the hot-read lane, on an event loop already busy with the handshakes:
the waits passed the lane's timeout and thousands of upgrades were answered 503
``database_unavailable``. :class:`SessionChecks` queues the checks and runs one
statement for all those waiting (up to :data:`MAX_BATCH` tokens), one batch at a
time: while a batch is at the database the next one gathers, so a busier node asks
bigger questions instead of more of them. A check alone costs one query, as before.

PostgreSQL only (the tokens travel as one array parameter); on SQLite each check is its
own read (an embedded node holds a few tunnels, and its reads cost no round trip).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from visiona.kit.clock import utcnow
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
        self._waiting: list[tuple[str, asyncio.Future[ValidSession | None]]] = []
        self._runner: asyncio.Task[None] | None = None
        #: statements run and tokens checked by them, since start (for tests and metrics)
        self.statements = 0
        self.checked = 0

    async def find(self, token_hash: str) -> ValidSession | None:
        """The session token ``token_hash`` if it holds (see
        :func:`visiona.tokens.repository.find_valid_session`); a database failure raises
        as that read would."""
        if not self._batched:
            self.statements += 1
            self.checked += 1
            return await repository.find_valid_session(self._db, token_hash, utcnow())
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[ValidSession | None] = loop.create_future()
        self._waiting.append((token_hash, answer))
        if self._runner is None:
            self._runner = loop.create_task(self._run())
        return await answer

    async def _run(self) -> None:
        """Answer the waiting checks, one batch at a time, until none wait."""
        batch: list[tuple[str, asyncio.Future[ValidSession | None]]] = []
        try:
            while self._waiting:
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                await self._answer(batch)
        except BaseException:  # cancelled (the node stops): nobody waits for ever
            for _, answer in batch + self._waiting:
                answer.cancel()
            self._waiting.clear()
            raise
        finally:
            self._runner = None

    async def _answer(self, batch: list[tuple[str, asyncio.Future[ValidSession | None]]]) -> None:
        hashes = list({token_hash for token_hash, _ in batch})
        self.statements += 1
        self.checked += len(batch)
        try:
            found = await repository.find_valid_sessions(self._db, hashes, utcnow())
        except Exception as err:  # noqa: BLE001 - each waiting check raises it, as its own read would
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(err)
            return
        by_hash = {session.token_hash: session for session in found}
        for token_hash, answer in batch:
            if not answer.done():  # a caller that went away cancelled its own
                answer.set_result(by_hash.get(token_hash))
