"""Fixed-window rate limits, in Redis when configured or in process otherwise.

One Redis round trip per hit (a pipeline of SET NX EX + INCR + TTL); no cleanup
task: Redis expires the keys, the in-process store drops stale windows as it goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import RedisError

from visiona.kit.errors import SessionStoreUnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True)
class Hit:
    """The outcome of counting one attempt."""

    allowed: bool
    retry_after: int


class RateLimiter(Protocol):
    """Counts attempts per key in a fixed window."""

    async def hit(self, key: str, limit: int, window: int) -> Hit:
        """Count one attempt for ``key``; allowed while the count is within ``limit``."""
        ...


class MemoryRateLimiter:
    """In-process fixed windows (one node only)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        """Keep at most about ``max_keys`` windows before sweeping stale ones."""
        self._windows: dict[str, tuple[float, int]] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, limit: int, window: int) -> Hit:
        """Count one attempt for ``key``."""
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= window:
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if len(self._windows) > self._max_keys:
            self._sweep(now, window)
        retry = int(window - (now - start)) + 1
        return Hit(allowed=count <= limit, retry_after=retry)

    def _sweep(self, now: float, window: int) -> None:
        for k, (start, _count) in list(self._windows.items()):
            if now - start >= window:
                del self._windows[k]


class RedisRateLimiter:
    """Fixed windows in Redis, shared by every node."""

    def __init__(self, redis: Redis, prefix: str = "visiona:rl:") -> None:
        """Use ``redis`` with keys under ``prefix``."""
        self._redis = redis
        self._prefix = prefix

    async def hit(self, key: str, limit: int, window: int) -> Hit:
        """Count one attempt for ``key``; Redis down → 503 session_store_unavailable."""
        rkey = self._prefix + key
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(rkey, 0, ex=window, nx=True)
                pipe.incr(rkey)
                pipe.ttl(rkey)
                _, count, ttl = await pipe.execute()
        except (RedisError, OSError) as err:
            raise SessionStoreUnavailableError() from err
        return Hit(allowed=int(count) <= limit, retry_after=max(1, int(ttl)))
