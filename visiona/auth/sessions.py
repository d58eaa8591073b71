"""Web-session stores: Redis in production, in-process by default; same semantics.

A session has an idle timeout (refreshed on every use) and an absolute deadline.
In Redis the key's TTL is the idle timeout and the deadline lives in the value;
one Lua script checks the deadline and refreshes the TTL in a single round trip,
so no cleanup task exists. Tokens are stored under their sha256 only.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import NoScriptError, RedisError

from visiona.kit.errors import SessionStoreUnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis

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

    async def create(self, token_hash: str, user_id: uuid.UUID) -> WebSession:
        """Store a new session."""
        ...

    async def touch(self, token_hash: str) -> WebSession | None:
        """Return the session and refresh its idle timeout, or None if gone."""
        ...

    async def delete(self, token_hash: str) -> None:
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

    async def create(self, token_hash: str, user_id: uuid.UUID) -> WebSession:
        """Store a new session (and drop expired ones every so often)."""
        now = self._clock()
        deadline = now + self._absolute
        self._data[token_hash] = (user_id, deadline, now + self._idle)
        self._creates += 1
        if self._creates % 1024 == 0:
            self._sweep(now)
        return WebSession(user_id=user_id, expires_at=deadline)

    async def touch(self, token_hash: str) -> WebSession | None:
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

    async def delete(self, token_hash: str) -> None:
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

    async def create(self, token_hash: str, user_id: uuid.UUID) -> WebSession:
        """Store a new session with the idle TTL; the deadline goes in the value."""
        now = time.time()
        deadline = int(now + self._absolute)
        value = f"{deadline}|{user_id}|{int(now)}"
        try:
            await self._redis.set(self._prefix + token_hash, value, ex=self._idle, nx=True)
        except (RedisError, OSError) as err:
            raise self._unavailable() from err
        return WebSession(user_id=user_id, expires_at=float(deadline))

    async def touch(self, token_hash: str) -> WebSession | None:
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

    async def delete(self, token_hash: str) -> None:
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
