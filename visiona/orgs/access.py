"""Which organisation a request acts in, and the caller's role there: cached per node.

The membership lookup must not add a database round trip per request (issue 22, item
6). :class:`Memberships` keeps ``(user, requested organisation) → (organisation, role)``
in process, next to the session check:

- **With Redis** (production, every node): entries live up to ``ttl`` (30 s) and a
  change of a membership (role changed, member removed or left, invitation accepted)
  publishes the user's id on ``visiona:membership``; every node drops that user's
  entries when it hears it (a few milliseconds), so a demotion takes effect within a
  second everywhere. The change is published after its transaction committed, so no
  node can re-read the old role after dropping it. If the channel is lost the listener
  reconnects; meanwhile entries still expire after ``ttl``.
- **Without Redis** (the embedded SQLite file; PostgreSQL alone): the node that makes
  the change drops the entries at once, and entries live ``local_ttl`` (1 s), so a change
  made through another process sharing the database is seen within a second.

"Not a member" is cached too (a probe of someone else's organisation costs no query
either), and dropped with the rest of the user's entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from visiona.kit.invalidation import listen_for_ids
from visiona.orgs import repository
from visiona.orgs.permissions import Role

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncConnection

    from visiona.kit.database import Database

_LOGGER = logging.getLogger(__name__)

CHANNEL = "visiona:membership"
#: Seconds an entry is trusted when every change is published (Redis).
TTL = 30.0
#: Seconds an entry is trusted without Redis (another process may change it unheard).
LOCAL_TTL = 1.0
#: Entries kept per node (the oldest read is forgotten first).
CACHE_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class Access:
    """The organisation a request acts in and the caller's role there."""

    org_id: uuid.UUID
    role: Role


class Memberships:
    """The cached membership lookup (one per node, built by the composition root)."""

    def __init__(
        self,
        db: Database,
        redis: Redis | None = None,
        *,
        ttl: float | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        """Look memberships up in ``db``; with ``redis``, hear every node's changes."""
        self._db = db
        self._redis = redis
        self._ttl = ttl if ttl is not None else (TTL if redis is not None else LOCAL_TTL)
        self._size = cache_size
        # user -> {requested org (None: the personal one) -> (access or None, read at)}
        self._cache: dict[uuid.UUID, dict[uuid.UUID | None, tuple[Access | None, float]]] = {}
        self._entries = 0
        self._listener: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def ttl(self) -> float:
        """Seconds an entry is trusted."""
        return self._ttl

    async def resolve(
        self,
        user_id: uuid.UUID,
        requested: uuid.UUID | None,
        conn: AsyncConnection | None = None,
    ) -> Access | None:
        """The organisation ``user_id`` acts in (``requested``, else their personal one) and
        their role; None when they are not a member. ``conn``: the request's open unit of
        work, if any (else a short read of its own)."""
        mine = self._cache.get(user_id)
        if mine is not None:
            found = mine.get(requested)
            if found is not None:
                access, read_at = found
                if time.monotonic() - read_at < self._ttl:
                    return access
        if conn is not None:
            access = await self._read(conn, user_id, requested)
        else:
            async with self._db.reading() as own:
                access = await self._read(own, user_id, requested)
        self._remember(user_id, requested, access)
        return access

    @staticmethod
    async def _read(
        conn: AsyncConnection, user_id: uuid.UUID, requested: uuid.UUID | None
    ) -> Access | None:
        if requested is None:
            personal = await repository.personal_org(conn, user_id)
            return None if personal is None else Access(*personal)
        role = await repository.role_of(conn, requested, user_id)
        return None if role is None else Access(requested, role)

    def _remember(
        self, user_id: uuid.UUID, requested: uuid.UUID | None, access: Access | None
    ) -> None:
        if self._entries >= self._size and user_id not in self._cache:
            oldest = next(iter(self._cache))
            self._entries -= len(self._cache.pop(oldest))
        mine = self._cache.setdefault(user_id, {})
        if requested not in mine:
            self._entries += 1
        mine[requested] = (access, time.monotonic())

    def forget(self, user_id: uuid.UUID) -> None:
        """Drop this node's entries of ``user_id``."""
        dropped = self._cache.pop(user_id, None)
        if dropped is not None:
            self._entries -= len(dropped)

    async def changed(self, user_id: uuid.UUID) -> None:
        """A membership of ``user_id`` changed (call after the commit): forget it here and
        tell every other node."""
        self.forget(user_id)
        if self._redis is None:
            return
        try:
            await self._redis.publish(CHANNEL, str(user_id))
        except Exception as err:  # noqa: BLE001 - Redis away: the entries expire after ttl
            _LOGGER.warning("membership change not published (%s)", type(err).__name__)

    def start(self) -> None:
        """Listen for other nodes' changes (with Redis) until :meth:`close`."""
        if self._redis is not None and self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(self._redis))

    async def _listen(self, redis: Redis) -> None:
        await listen_for_ids(
            redis, CHANNEL, forget=self.forget, lost=self._lost, closing=lambda: self._closing
        )

    def _lost(self) -> None:
        """The channel is lost: changes may be missed meanwhile, so drop every entry."""
        self._cache.clear()
        self._entries = 0

    async def close(self) -> None:
        """Stop listening."""
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
