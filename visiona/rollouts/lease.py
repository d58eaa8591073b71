"""The rollout scheduler's lease: which node drives rollouts now, and its fencing token.

In a cluster (Redis configured), ``rollout:leader`` holds the leading node's id and a
random suffix with a TTL (the cluster's lease TTL); taking it (``SET NX``) also draws
the fencing token from ``rollout:fence`` (``INCR``, never below the wall clock in
milliseconds, so a token is never smaller than one drawn before, even after Redis
lost its data). Renewal and release are compare-and-set, as the tunnel registry's
(:mod:`visiona.cluster.registry`). The token goes into every write of the scheduler
(``rollouts.epoch``): a node that lost the lease without knowing it (paused, cut
off) writes nothing once a newer leader fenced the rollout.

A single node (no Redis): the lease is always held; its token is the wall clock in
milliseconds at start, so a restarted node fences the rows of its previous run.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

_LOGGER = logging.getLogger(__name__)
LEADER_KEY = "rollout:leader"
FENCE_KEY = "rollout:fence"

# KEYS: leader, fence; ARGV: value, ttl ms, now ms. The token, or nil when another holds it.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  local floor = tonumber(ARGV[3])
  if token < floor then
    redis.call('SET', KEYS[2], ARGV[3])
    token = floor
  end
  return token
end
return false
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Lease(Protocol):
    """The scheduler's right to act, and the fencing token that proves it."""

    #: the longest a holder may wait between two :meth:`hold` calls and keep the lease
    renew_every: float

    async def hold(self) -> int | None:
        """Take or renew the lease: its fencing token, or None when another node holds it."""
        ...

    async def release(self) -> None:
        """Give the lease up (stopping)."""
        ...


class LocalLease:
    """A single node: always held, one token per start (the wall clock in ms)."""

    renew_every = float("inf")

    def __init__(self) -> None:
        """Draw this run's token."""
        self._token = _now_ms()

    async def hold(self) -> int:
        """This run's token."""
        return self._token

    async def release(self) -> None:
        """Nothing to give up."""


class RedisLease:
    """A cluster node's claim on ``rollout:leader`` (compare-and-set, with a TTL)."""

    def __init__(self, redis: Redis, *, node_id: str, ttl: float) -> None:
        """Claim as ``node_id``; a lease not renewed for ``ttl`` seconds expires."""
        self._redis = redis
        self._value = f"{node_id}:{secrets.token_hex(8)}"
        self._ttl_ms = max(1, int(ttl * 1000))
        self.renew_every = ttl / 3
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._token: int | None = None

    async def hold(self) -> int | None:
        """Renew the lease this node holds, else try to take it (a new token)."""
        if self._token is not None:
            if await self._renew(keys=[LEADER_KEY], args=[self._value, self._ttl_ms]):
                return self._token
            _LOGGER.warning("rollouts: this node lost the scheduler lease")
            self._token = None
        token = await self._acquire(
            keys=[LEADER_KEY, FENCE_KEY], args=[self._value, self._ttl_ms, _now_ms()]
        )
        if token is None:
            return None
        self._token = int(token)
        _LOGGER.info("rollouts: this node drives the rollouts (fencing token %s)", self._token)
        return self._token

    async def release(self) -> None:
        """Delete the lease if it is still this node's."""
        if self._token is not None:
            self._token = None
            await self._release(keys=[LEADER_KEY], args=[self._value])
