"""The API key lookup of every request, cached per node, and its batched usage.

A request with ``Authorization: Bearer vak_…`` must cost no more than a web session's
(issue 22 items 4 and 6): :class:`ApiKeys` keeps ``sha256(key) → key`` in process,
like :class:`visiona.orgs.access.Memberships` keeps roles:

- **With Redis**: entries live up to ``ttl`` (30 s); a revocation publishes the key's id
  on ``visiona:api_key`` after its commit and every node drops the key when it hears it
  (milliseconds), so a revocation takes effect within a second everywhere.
- **Without Redis**: the revoking node drops the key at once; entries live ``local_ttl``
  (1 s), so another process sharing the database sees it within a second.

Unknown keys are cached too (a guess costs no query the second time). Expiry is checked
on every use against the cached ``expires_at``.

``last_used_at`` is never written per request: :meth:`ApiKeys.used` notes the key in a
set, and a background task (started by the composition root) writes the set every
``flush_interval`` seconds in one statement, and once more when the node stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from visiona.apikeys import repository
from visiona.apikeys.repository import ApiKey
from visiona.kit.clock import utcnow
from visiona.kit.invalidation import listen_for_ids

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncConnection

    from visiona.kit.database import Database

_LOGGER = logging.getLogger(__name__)

CHANNEL = "visiona:api_key"
#: Seconds an entry is trusted when every revocation is published (Redis).
TTL = 30.0
#: Seconds an entry is trusted without Redis.
LOCAL_TTL = 1.0
#: Entries kept per node (the oldest read is forgotten first).
CACHE_SIZE = 20_000


class ApiKeys:
    """The cached key lookup and the usage batch (one per node, built by the app)."""

    def __init__(
        self,
        db: Database,
        redis: Redis | None = None,
        *,
        flush_interval: float = 5.0,
        ttl: float | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        """Look keys up in ``db``; with ``redis``, hear every node's revocations."""
        self._db = db
        self._redis = redis
        self._ttl = ttl if ttl is not None else (TTL if redis is not None else LOCAL_TTL)
        self._size = cache_size
        self._flush_interval = flush_interval
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}  # hash -> (key, read at)
        self._used: dict[uuid.UUID, datetime] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def ttl(self) -> float:
        """Seconds an entry is trusted."""
        return self._ttl

    async def resolve(self, key_hash: str, conn: AsyncConnection | None = None) -> ApiKey | None:
        """The key stored under ``key_hash`` while it is live (not revoked, not expired);
        None otherwise. ``conn``: the request's open unit of work, if any."""
        found = self._cache.get(key_hash)
        if found is not None and time.monotonic() - found[1] < self._ttl:
            key = found[0]
        else:
            if conn is not None:
                key = await repository.by_hash(conn, key_hash)
            else:
                async with self._db.reading() as own:
                    key = await repository.by_hash(own, key_hash)
            self._remember(key_hash, key)
        if key is None or key.revoked_at is not None or key.expires_at <= utcnow():
            return None
        return key

    def _remember(self, key_hash: str, key: ApiKey | None) -> None:
        if len(self._cache) >= self._size and key_hash not in self._cache:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key_hash] = (key, time.monotonic())

    def forget(self, key_id: uuid.UUID) -> None:
        """Drop this node's entry of the key ``key_id``."""
        for key_hash, (key, _at) in list(self._cache.items()):
            if key is not None and key.id == key_id:
                del self._cache[key_hash]

    async def revoked(self, key_id: uuid.UUID) -> None:
        """The key was revoked (call after the commit): forget it here and everywhere."""
        self.forget(key_id)
        if self._redis is None:
            return
        try:
            await self._redis.publish(CHANNEL, str(key_id))
        except Exception as err:  # noqa: BLE001 - Redis away: the entries expire after ttl
            _LOGGER.warning("API key revocation not published (%s)", type(err).__name__)

    def used(self, key_id: uuid.UUID) -> None:
        """Note a use of the key, for the next batched write of ``last_used_at``."""
        self._used[key_id] = utcnow()

    async def flush(self) -> int:
        """Write the noted uses now (one statement); how many keys were written."""
        if not self._used:
            return 0
        batch, self._used = self._used, {}
        try:
            async with self._db.transaction() as conn:
                await repository.touch_used(conn, batch)
        except Exception as err:  # noqa: BLE001 - a lost batch costs a stale timestamp only
            _LOGGER.warning("API key usage not written (%s)", type(err).__name__)
            for key_id, at in batch.items():
                self._used.setdefault(key_id, at)
            return 0
        return len(batch)

    def start(self) -> None:
        """Write usage every ``flush_interval``; with Redis, hear revocations."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._flusher()))
        if self._redis is not None:
            self._tasks.append(loop.create_task(self._listen(self._redis)))

    async def _flusher(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._flush_interval)
            await self.flush()

    async def _listen(self, redis: Redis) -> None:
        await listen_for_ids(
            redis,
            CHANNEL,
            forget=self.forget,
            lost=self._cache.clear,
            closing=lambda: self._closing,
        )

    async def close(self) -> None:
        """Stop the tasks and write the last uses."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.flush()
