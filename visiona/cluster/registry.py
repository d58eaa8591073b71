"""The tunnel registry in Redis: which node holds which device's tunnel (a lease).

``tun:dev:{device_id}`` = ``{"node", "url", "epoch"}`` (the epoch: the tunnel's own, as in
its status writes — visiona/tunnel/repository.py — plus a random suffix) with a TTL of about three
keepalive intervals. The node whose tunnel came up last writes it (newest wins, by
epoch); renewal and deletion are compare-and-set Lua scripts keyed on the node id and
epoch, so a node never extends nor deletes a lease it no longer holds. A node renews
all its leases once per keepalive interval, up to :data:`BATCH` keys per script call
(:meth:`TunnelRegistry.renew_many`), and closes the tunnel of a lease it finds held by
another node (4409 ``superseded``).

A deployment's transfer holds ``dep:run:{deployment_id}`` (the node id, same TTL) on
the node that runs it, renewed while it runs: a record still ``pending`` or
``transferring`` without that key was left by a node that died.

Revocations travel on the ``visiona:revoked`` channel: every node closes the tunnel it
holds for the device named in a message (the node's revocation re-check after each
renewal round covers a message that was missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

_LOGGER = logging.getLogger(__name__)
KEY_PREFIX = "tun:dev:"
RUN_PREFIX = "dep:run:"
REVOKED_CHANNEL = "visiona:revoked"
#: The most leases one script call renews or claims (a round trip each; a call of 500
#: keys keeps Redis busy well under a millisecond).
BATCH = 500

# KEYS[1] lease; ARGV: value, ttl ms, epoch (decimal ns). Newest wins by the tunnel's
# epoch, not by the order the claims land in: a lease of a newer tunnel (a longer or
# greater epoch) is kept, and returned; else the value is written and nil returned.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local epoch = string.match(current, '"epoch": "(%d+)')
  if epoch and (#epoch > #ARGV[3] or (#epoch == #ARGV[3] and epoch > ARGV[3])) then
    return current
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# KEYS[1] lease; ARGV: value, ttl ms. Extends only the caller's own lease (same value).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: leases; ARGV[1] ttl ms, ARGV[i + 1] the value of KEYS[i]. _RENEW over each key;
# returns the positions (1-based) of the keys not renewed.
_RENEW_MANY = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""
# KEYS: leases; ARGV[1] ttl ms, ARGV[2i] the value and ARGV[2i + 1] the epoch of KEYS[i].
# _CLAIM over each key; returns the positions (1-based) where a newer lease was kept.
_CLAIM_MANY = """
local newer = {}
for i, key in ipairs(KEYS) do
  local value, stamp = ARGV[2 * i], ARGV[2 * i + 1]
  local current = redis.call('GET', key)
  local epoch = current and string.match(current, '"epoch": "(%d+)')
  if epoch and (#epoch > #stamp or (#epoch == #stamp and epoch > stamp)) then
    newer[#newer + 1] = i
  else
    redis.call('SET', key, value, 'PX', ARGV[1])
  end
end
return newer
"""

# KEYS: leases; ARGV[i] the value this node wrote for KEYS[i] ('' when it holds none).
# Deletes each key still holding the caller's own value; returns, per key, the value
# holding it after ('' for nobody).
_RELEASE_MANY = """
local after = {}
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if current and current == ARGV[i] then
    redis.call('DEL', key)
    current = false
  end
  after[i] = current or ''
end
return after
"""


@dataclass(frozen=True)
class Owner:
    """The node holding a device's tunnel, as the registry names it."""

    node_id: str
    url: str
    epoch: str


@dataclass(frozen=True)
class Lease:
    """This node's claim on one device's tunnel (the exact value written)."""

    device_id: uuid.UUID
    value: str


def _key(device_id: uuid.UUID) -> str:
    return f"{KEY_PREFIX}{device_id}"


def _parse(raw: bytes | str | None) -> Owner | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return Owner(str(data["node"]), str(data["url"]), str(data["epoch"]))
    except (ValueError, KeyError, TypeError):
        return None


class TunnelRegistry:
    """One node's view of the registry: claim, renew, release, look up, revoke."""

    def __init__(self, redis: Redis, *, node_id: str, node_url: str, ttl: float) -> None:
        """Prepare the registry of node ``node_id`` reachable at ``node_url``."""
        self._redis = redis
        self.node_id = node_id
        self.node_url = node_url
        self.ttl = ttl
        self._ttl_ms = max(1, int(ttl * 1000))
        self._renew = redis.register_script(_RENEW)
        self._claim = redis.register_script(_CLAIM)
        self._renew_many = redis.register_script(_RENEW_MANY)
        self._claim_many = redis.register_script(_CLAIM_MANY)
        self._release_many = redis.register_script(_RELEASE_MANY)
        self._listener: asyncio.Task[None] | None = None

    async def claim(self, device_id: uuid.UUID, *, epoch: int | None = None) -> Lease | None:
        """Take the device's lease for the tunnel of ``epoch`` (the one in its status
        writes; now when not given): newest wins over any other node's — by epoch, so
        an older tunnel's late claim does not take it back. None: a newer tunnel holds it.
        """
        stamp = str(epoch if epoch is not None else time.time_ns())
        value = self._value(stamp)
        newer = await self._claim(keys=[_key(device_id)], args=[value, self._ttl_ms, stamp])
        if newer is not None:
            return None
        return Lease(device_id, value)

    def _value(self, stamp: str) -> str:
        """The lease value this node writes for a tunnel of epoch ``stamp``."""
        return json.dumps(
            {"node": self.node_id, "url": self.node_url, "epoch": f"{stamp}-{secrets.token_hex(4)}"}
        )

    async def claim_many(self, claims: Sequence[tuple[uuid.UUID, int]]) -> dict[uuid.UUID, Lease]:
        """:meth:`claim` for many ``(device_id, epoch)`` at once, :data:`BATCH` per round
        trip; the leases taken (a device missing from the answer: a newer tunnel holds it).
        """
        taken: dict[uuid.UUID, Lease] = {}
        for start in range(0, len(claims), BATCH):
            chunk = claims[start : start + BATCH]
            leases = [Lease(device_id, self._value(str(epoch))) for device_id, epoch in chunk]
            args: list[str | int] = [self._ttl_ms]
            for lease, (_, epoch) in zip(leases, chunk, strict=True):
                args += [lease.value, str(epoch)]
            newer = await self._claim_many(keys=[_key(d) for d, _ in chunk], args=args)
            kept = {int(i) - 1 for i in newer}
            taken.update((ls.device_id, ls) for i, ls in enumerate(leases) if i not in kept)
        return taken

    async def renew(self, lease: Lease) -> bool:
        """Extend ``lease``; False when another node (or nobody) holds the device now."""
        return bool(
            await self._renew(keys=[_key(lease.device_id)], args=[lease.value, self._ttl_ms])
        )

    async def renew_many(self, leases: Sequence[Lease]) -> set[uuid.UUID]:
        """:meth:`renew` many leases, :data:`BATCH` per round trip (one script call each);
        the devices whose lease was not renewed (another node, or nobody, holds it now)."""
        lost: set[uuid.UUID] = set()
        for start in range(0, len(leases), BATCH):
            chunk = leases[start : start + BATCH]
            keys = [_key(lease.device_id) for lease in chunk]
            positions = await self._renew_many(
                keys=keys, args=[self._ttl_ms, *(lease.value for lease in chunk)]
            )
            lost.update(chunk[int(i) - 1].device_id for i in positions)
        return lost

    async def release_many(
        self, releases: Sequence[tuple[uuid.UUID, str]]
    ) -> dict[uuid.UUID, Owner | None]:
        """Delete each lease still this node's — ``(device id, the lease's value)``, an
        empty value for a device whose lease this node never took — :data:`BATCH` per
        round trip (one script call each); the holder of each device afterwards (None:
        nobody)."""
        after: dict[uuid.UUID, Owner | None] = {}
        for start in range(0, len(releases), BATCH):
            chunk = releases[start : start + BATCH]
            values = await self._release_many(
                keys=[_key(device_id) for device_id, _ in chunk],
                args=[value for _, value in chunk],
            )
            for (device_id, _), value in zip(chunk, values, strict=True):
                after[device_id] = _parse(value or None)
        return after

    async def owner(self, device_id: uuid.UUID) -> Owner | None:
        """The node holding the device's tunnel, or None (none, or its lease expired)."""
        return _parse(await self._redis.get(_key(device_id)))

    async def owners(self, device_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Owner | None]:
        """:meth:`owner` of many devices in one round trip."""
        ids = list(device_ids)
        if not ids:
            return {}
        raws = await self._redis.mget([_key(d) for d in ids])
        return {d: _parse(r) for d, r in zip(ids, raws, strict=True)}

    # -- deployment transfers ------------------------------------------------------
    async def claim_run(self, deployment_id: uuid.UUID) -> None:
        """Note that this node runs the deployment's transfer (until :meth:`release_run`)."""
        await self._redis.set(f"{RUN_PREFIX}{deployment_id}", self.node_id, px=self._ttl_ms)

    async def renew_run(self, deployment_id: uuid.UUID) -> None:
        """Extend the run lease (written again if it expired meanwhile)."""
        await self.claim_run(deployment_id)

    async def release_run(self, deployment_id: uuid.UUID) -> None:
        """The transfer ended on this node."""
        await self._redis.delete(f"{RUN_PREFIX}{deployment_id}")

    async def running(self, deployment_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """The deployments among ``deployment_ids`` that a live node is transferring."""
        ids = list(deployment_ids)
        if not ids:
            return set()
        raws = await self._redis.mget([f"{RUN_PREFIX}{d}" for d in ids])
        return {d for d, raw in zip(ids, raws, strict=True) if raw is not None}

    async def publish_revoked(self, device_id: uuid.UUID) -> None:
        """Tell every node the device's credentials were revoked."""
        await self._redis.publish(REVOKED_CHANNEL, str(device_id))

    def listen_revoked(self, handler: Callable[[uuid.UUID], Awaitable[None]]) -> None:
        """Run ``handler`` for each revocation message until :meth:`close`."""
        self._listener = asyncio.get_running_loop().create_task(self._listen(handler))

    async def _listen(self, handler: Callable[[uuid.UUID], Awaitable[None]]) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(REVOKED_CHANNEL)
                    while True:
                        # A short wait, below the client's socket timeout, in a loop.
                        message: dict[str, Any] | None = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=0.5
                        )
                        if message is None or message.get("type") != "message":
                            continue
                        try:
                            device_id = uuid.UUID(bytes(message["data"]).decode("ascii"))
                        except (ValueError, UnicodeDecodeError):
                            continue
                        await handler(device_id)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - Redis away: retry; renewals re-check meanwhile
                _LOGGER.warning(
                    "cluster: revocation channel lost (%s); retrying", type(err).__name__
                )
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Stop listening for revocations."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
