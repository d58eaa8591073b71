"""Web-session stores: Redis, the SQL database, or in-process; one set of semantics.

A session has an idle timeout (refreshed on use) and an absolute deadline. Tokens
are stored under their sha256 only. Which store runs (:func:`build_session_store`, called
by the composition root):

- **Redis** when ``VISIONA_REDIS_URL`` is set (production). The key's TTL is the
  idle timeout and the deadline lives in the value; one Lua script checks the
  deadline and refreshes the TTL in a single round trip, so no cleanup task exists.
- **The database** (:class:`SqlSessionStore`, table ``web_sessions``) otherwise: the
  embedded SQLite file, or PostgreSQL without Redis. Sessions survive a restart.
- **In-process** (:class:`MemorySessionStore`) only for a ``:memory:`` database,
  which does not survive a restart either.

Every method takes an optional ``conn``: the request's unit-of-work connection when
one is open (the SQL store then runs on it, and never asks the pool for a second
connection: the embedded SQLite pool has one); the other stores ignore it.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import NoScriptError, RedisError
from sqlalchemy import bindparam, delete, insert, select, update

from visiona.kit.clock import utcnow
from visiona.kit.errors import SessionStoreUnavailableError
from visiona.kit.schema import web_sessions

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncConnection

    from visiona.kit.database import Database
    from visiona.kit.settings import Settings

_LOGGER = logging.getLogger(__name__)

_TOUCH_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local now = tonumber(redis.call('TIME')[1])
local sep = string.find(v, '|', 1, true)
local deadline = tonumber(string.sub(v, 1, sep - 1))
if now >= deadline then
  redis.call('DEL', KEYS[1])
  return false
end
local ttl = tonumber(ARGV[1])
if deadline - now < ttl then ttl = deadline - now end
redis.call('EXPIRE', KEYS[1], ttl)
return v
"""


@dataclass(frozen=True)
class WebSession:
    """A live web session."""

    user_id: uuid.UUID
    expires_at: float  # absolute deadline, unix seconds


class SessionStore(Protocol):
    """Where web sessions live, keyed by the token's sha256."""

    kind: str

    async def create(
        self, token_hash: str, user_id: uuid.UUID, conn: AsyncConnection | None = None
    ) -> WebSession:
        """Store a new session."""
        ...

    async def touch(
        self, token_hash: str, conn: AsyncConnection | None = None
    ) -> WebSession | None:
        """Return the session and refresh its idle timeout, or None if gone."""
        ...

    async def delete(self, token_hash: str, conn: AsyncConnection | None = None) -> None:
        """End the session."""
        ...

    async def ping(self) -> None:
        """Raise when the store cannot be reached."""
        ...


class MemorySessionStore:
    """In-process sessions for a single node (the embedded default)."""

    kind = "memory"

    def __init__(
        self, idle_ttl: int, absolute_ttl: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        """Sessions idle out after ``idle_ttl`` s and end after ``absolute_ttl`` s."""
        self._idle = idle_ttl
        self._absolute = absolute_ttl
        self._clock = clock
        self._data: dict[str, tuple[uuid.UUID, float, float]] = {}  # user, deadline, idle-until
        self._creates = 0

    async def create(
        self,
        token_hash: str,
        user_id: uuid.UUID,
        conn: AsyncConnection | None = None,  # noqa: ARG002 - the protocol's, unused here
    ) -> WebSession:
        """Store a new session (and drop expired ones every so often)."""
        now = self._clock()
        deadline = now + self._absolute
        self._data[token_hash] = (user_id, deadline, now + self._idle)
        self._creates += 1
        if self._creates % 1024 == 0:
            self._sweep(now)
        return WebSession(user_id=user_id, expires_at=deadline)

    async def touch(
        self,
        token_hash: str,
        conn: AsyncConnection | None = None,  # noqa: ARG002 - the protocol's, unused here
    ) -> WebSession | None:
        """Return the session and refresh its idle timeout."""
        entry = self._data.get(token_hash)
        if entry is None:
            return None
        user_id, deadline, idle_until = entry
        now = self._clock()
        if now >= deadline or now >= idle_until:
            self._data.pop(token_hash, None)
            return None
        self._data[token_hash] = (user_id, deadline, min(deadline, now + self._idle))
        return WebSession(user_id=user_id, expires_at=deadline)

    async def delete(
        self,
        token_hash: str,
        conn: AsyncConnection | None = None,  # noqa: ARG002 - the protocol's, unused here
    ) -> None:
        """End the session."""
        self._data.pop(token_hash, None)

    async def ping(self) -> None:
        """Always reachable."""

    def _sweep(self, now: float) -> None:
        for key, (_u, deadline, idle_until) in list(self._data.items()):
            if now >= deadline or now >= idle_until:
                del self._data[key]


class RedisSessionStore:
    """Sessions in Redis, shared by every node; Redis down → 503."""

    kind = "redis"

    def __init__(
        self,
        redis: Redis,
        idle_ttl: int,
        absolute_ttl: int,
        *,
        prefix: str = "visiona:sess:",
        on_error: Callable[[], None] | None = None,
    ) -> None:
        """Store sessions in ``redis`` under ``prefix``; ``on_error()`` counts failures."""
        self._redis = redis
        self._idle = idle_ttl
        self._absolute = absolute_ttl
        self._prefix = prefix
        self._on_error = on_error
        # EVALSHA directly (redis-py's Script object re-checks its registration on every
        # call); the script is loaded once when Redis answers NOSCRIPT (after a restart).
        self._touch_sha = hashlib.sha1(_TOUCH_SCRIPT.encode(), usedforsecurity=False).hexdigest()

    def _unavailable(self) -> SessionStoreUnavailableError:
        if self._on_error is not None:
            self._on_error()
        return SessionStoreUnavailableError()

    async def create(
        self,
        token_hash: str,
        user_id: uuid.UUID,
        conn: AsyncConnection | None = None,  # noqa: ARG002 - the protocol's, unused here
    ) -> WebSession:
        """Store a new session with the idle TTL; the deadline goes in the value."""
        now = time.time()
        deadline = int(now + self._absolute)
        value = f"{deadline}|{user_id}|{int(now)}"
        try:
            await self._redis.set(self._prefix + token_hash, value, ex=self._idle, nx=True)
        except (RedisError, OSError) as err:
            raise self._unavailable() from err
        return WebSession(user_id=user_id, expires_at=float(deadline))

    async def touch(
        self,
        token_hash: str,
        conn: AsyncConnection | None = None,  # noqa: ARG002 - the protocol's, unused here
    ) -> WebSession | None:
        """Check the deadline and refresh the idle TTL in one round trip."""
        key = self._prefix + token_hash
        try:
            try:
                raw = await self._evalsha_touch(key)
            except NoScriptError:
                await self._redis.script_load(_TOUCH_SCRIPT)
                raw = await self._evalsha_touch(key)
        except (RedisError, OSError) as err:
            raise self._unavailable() from err
        if not raw:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        deadline, user_id, _created = text.split("|", 2)
        return WebSession(user_id=uuid.UUID(user_id), expires_at=float(deadline))

    async def _evalsha_touch(self, key: str) -> object:
        # redis-py leaves execute_command untyped; the reply is the script's value.
        command = self._redis.execute_command
        return await command("EVALSHA", self._touch_sha, 1, key, self._idle)  # type: ignore[no-untyped-call]

    async def delete(
        self,
        token_hash: str,
        conn: AsyncConnection | None = None,  # noqa: ARG002 - the protocol's, unused here
    ) -> None:
        """End the session."""
        try:
            await self._redis.delete(self._prefix + token_hash)
        except (RedisError, OSError) as err:
            raise self._unavailable() from err

    async def ping(self) -> None:
        """PING Redis."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as err:
            raise self._unavailable() from err


#: A used session's idle deadline is written back at most this often (seconds), so an
#: authenticated GET is a single SELECT and does not take SQLite's write lock.
REFRESH_AFTER = 60.0
#: Expired rows are deleted, at most this many at a time, when a session is created
#: and the last sweep of this process is at least ``SWEEP_EVERY`` seconds old.
SWEEP_EVERY = 600.0
SWEEP_BATCH = 500
#: Sessions kept in memory by one process (the oldest read is forgotten first).
CACHE_SIZE = 10_000
#: Seconds a remembered session is trusted before its row is read again.
CACHE_TTL = 5.0

_c = web_sessions.c
_INSERT = insert(web_sessions)
_GET = select(_c.user_id, _c.expires_at, _c.idle_expires_at).where(
    _c.token_hash == bindparam("token_hash")
)
# Only ever moves the idle deadline forward (two refreshes racing keep the later one).
_REFRESH = (
    update(web_sessions)
    .where(_c.token_hash == bindparam("key"))
    .where(_c.idle_expires_at < bindparam("idle_until"))
    .values(idle_expires_at=bindparam("idle_until"))
)
_DELETE = delete(web_sessions).where(_c.token_hash == bindparam("token_hash"))
# idle_expires_at never exceeds expires_at, so it alone says whether a row is dead.
_SWEEP = delete(web_sessions).where(
    _c.token_hash.in_(
        select(_c.token_hash)
        .where(_c.idle_expires_at <= bindparam("now"))
        .order_by(_c.idle_expires_at)
        .limit(bindparam("batch"))
        .scalar_subquery()
    )
)


class SqlSessionStore:
    """Sessions in the ``web_sessions`` table: they survive a restart of the server.

    The row holds the absolute deadline and the idle deadline, ``min(deadline, last
    use + idle_ttl)``; a session is alive while the idle deadline is ahead. A use
    writes the idle deadline back only when that moves it by at least
    ``refresh_after`` seconds (at most ``idle_ttl / 10``), so a session in constant
    use idles out between ``idle_ttl - refresh_after`` and ``idle_ttl`` after its
    last request. Dead rows are swept lazily, in bounded batches, on sign-in.

    With ``conn`` the statements run on the caller's connection (inside its
    transaction, or in autocommit for a read); without, the store opens a short
    unit of work of its own from ``db`` (a read for :meth:`touch`).

    Rows read are kept in memory for ``cache_ttl`` seconds (up to ``cache_size`` of
    them), so a session in use costs one SELECT per few seconds, not one per request.
    A sign-out through this store forgets the row at once; one through another
    process sharing the table (PostgreSQL without Redis) is seen here within
    ``cache_ttl``. Without the cache, the SELECT on SQLite added about 0.9 ms to each
    tiny proxied request (``python -m bench tunnel``, p50 1.29 -> 2.21 ms).
    """

    kind = "database"

    def __init__(
        self,
        db: Database,
        idle_ttl: int,
        absolute_ttl: int,
        *,
        clock: Callable[[], datetime] = utcnow,
        refresh_after: float = REFRESH_AFTER,
        sweep_every: float = SWEEP_EVERY,
        sweep_batch: int = SWEEP_BATCH,
        cache_size: int = CACHE_SIZE,
        cache_ttl: float = CACHE_TTL,
    ) -> None:
        """Sessions in ``db`` idle out after ``idle_ttl`` s and end after ``absolute_ttl`` s."""
        self._db = db
        self._idle = timedelta(seconds=idle_ttl)
        self._absolute = timedelta(seconds=absolute_ttl)
        self._clock = clock
        self._refresh = timedelta(seconds=min(refresh_after, idle_ttl / 10))
        self._sweep_every = timedelta(seconds=sweep_every)
        self._sweep_batch = sweep_batch
        self._last_sweep: datetime | None = None
        # token hash -> ((user id, absolute deadline, idle deadline as written), read at)
        self._cache: dict[str, tuple[tuple[uuid.UUID, datetime, datetime], float]] = {}
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl

    @asynccontextmanager
    async def _writing(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if conn is not None:
            yield conn
            return
        async with self._db.transaction() as own:  # a unit of work of its own, like Redis's SET
            yield own

    async def create(
        self, token_hash: str, user_id: uuid.UUID, conn: AsyncConnection | None = None
    ) -> WebSession:
        """Insert the session's row (and sweep dead rows when a sweep is due)."""
        now = self._clock()
        deadline = now + self._absolute
        values = {
            "token_hash": token_hash,
            "user_id": user_id,
            "created_at": now,
            "expires_at": deadline,
            "idle_expires_at": min(deadline, now + self._idle),
        }
        async with self._writing(conn) as db_conn:
            await db_conn.execute(_INSERT, values)
            if self._last_sweep is None or now - self._last_sweep >= self._sweep_every:
                self._last_sweep = now
                await self.sweep(db_conn, now)
        return WebSession(user_id=user_id, expires_at=deadline.timestamp())

    async def sweep(self, conn: AsyncConnection, now: datetime | None = None) -> int:
        """Delete up to one batch of dead rows on ``conn``; return how many went."""
        params = {"now": now or self._clock(), "batch": self._sweep_batch}
        removed = (await conn.execute(_SWEEP, params)).rowcount
        if removed:
            _LOGGER.debug("swept %s expired web sessions", removed)
        return int(removed)

    async def touch(
        self, token_hash: str, conn: AsyncConnection | None = None
    ) -> WebSession | None:
        """Read the session; write its idle deadline back when it moved far enough."""
        cached = self._cache.get(token_hash)
        if cached is not None:
            entry, read_at = cached
            if time.monotonic() - read_at < self._cache_ttl:
                return await self._use(token_hash, entry, conn, read_at=read_at)
            del self._cache[token_hash]
        if conn is not None:
            return await self._touch(conn, token_hash, remember=False)
        async with self._db.reading() as own:  # autocommit: a SELECT, rarely an UPDATE
            return await self._touch(own, token_hash, remember=True)

    async def _touch(
        self, conn: AsyncConnection, token_hash: str, *, remember: bool
    ) -> WebSession | None:
        # What the caller's connection reads may be its own uncommitted work (a session
        # created in a transaction that then rolls back): only committed reads are kept.
        row = (await conn.execute(_GET, {"token_hash": token_hash})).one_or_none()
        if row is None:
            return None
        user_id, deadline, idle_until = row
        entry = (user_id, deadline, idle_until)
        return await self._use(token_hash, entry, conn, remember=remember)

    def _remember(
        self, token_hash: str, entry: tuple[uuid.UUID, datetime, datetime], read_at: float
    ) -> None:
        cache = self._cache
        if token_hash not in cache and len(cache) >= self._cache_size:
            del cache[next(iter(cache))]
        cache[token_hash] = (entry, read_at)

    async def _use(
        self,
        token_hash: str,
        entry: tuple[uuid.UUID, datetime, datetime],
        conn: AsyncConnection | None,
        *,
        remember: bool = True,
        read_at: float | None = None,
    ) -> WebSession | None:
        user_id, deadline, idle_until = entry
        now = self._clock()
        if now >= idle_until or now >= deadline:
            # a dead row stays until a sweep: a read takes no write lock for it
            self._cache.pop(token_hash, None)
            return None
        fresh = min(deadline, now + self._idle)
        # Far enough to be worth a write, or the last step up to the absolute deadline
        # (once there, the row is never written again).
        if fresh - idle_until >= self._refresh or (fresh == deadline and idle_until < deadline):
            params = {"key": token_hash, "idle_until": fresh}
            if conn is not None:
                await conn.execute(_REFRESH, params)
            else:
                async with self._db.reading() as own:
                    await own.execute(_REFRESH, params)
            idle_until = fresh
        if remember:
            when = time.monotonic() if read_at is None else read_at
            self._remember(token_hash, (user_id, deadline, idle_until), when)
        return WebSession(user_id=user_id, expires_at=deadline.timestamp())

    async def delete(self, token_hash: str, conn: AsyncConnection | None = None) -> None:
        """Delete the session's row (and forget it)."""
        self._cache.pop(token_hash, None)
        async with self._writing(conn) as db_conn:
            await db_conn.execute(_DELETE, {"token_hash": token_hash})

    async def ping(self) -> None:
        """The database's own check (``SELECT 1``)."""
        await self._db.ping()


def build_session_store(
    settings: Settings,
    db: Database,
    redis: Redis | None,
    *,
    in_memory: bool,
    on_error: Callable[[], None],
) -> SessionStore:
    """The store ``settings`` ask for: Redis when configured, else the database; in
    process only for a ``:memory:`` database (``in_memory``), which nothing survives."""
    if redis is not None:
        return RedisSessionStore(
            redis, settings.session_idle_ttl, settings.session_absolute_ttl, on_error=on_error
        )
    if in_memory:
        return MemorySessionStore(settings.session_idle_ttl, settings.session_absolute_ttl)
    # the SQLite file or PostgreSQL: users stay signed in across a restart
    return SqlSessionStore(db, settings.session_idle_ttl, settings.session_absolute_ttl)
