"""The infrastructure one running application holds: built from settings in the lifespan.

:class:`Runtime` is the ground floor only — settings, the database, the Redis client,
metrics and the rate limiter. Features' live objects (the tunnel hub, object storage,
the cluster, the session store, ...) are built by the composition root
(:mod:`visiona.app`) and handed to routes by each feature's own ``dependencies``
module through a :class:`Provided` slot.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    import uuid

    from redis.asyncio import Redis
    from starlette.applications import Starlette

    from visiona.kit.database import Database
    from visiona.kit.metrics import Metrics
    from visiona.kit.ratelimit import RateLimiter
    from visiona.kit.settings import Settings

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

DeviceHook = Callable[["uuid.UUID"], Awaitable[None]]
DrainHook = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Runtime:
    """The infrastructure clients of one running application (no feature object)."""

    settings: Settings
    db: Database
    limiter: RateLimiter
    metrics: Metrics
    #: None when no ``VISIONA_REDIS_URL`` is configured (a single node)
    redis: Redis | None = None


class Provided(Generic[T]):
    """A live object the composition root hands to routes, held on ``app.state``.

    A feature declares one per object it hands out (``HUB = Provided[TunnelHub]("hub")``)
    in its ``dependencies`` module; :mod:`visiona.app` fills it in the lifespan before
    the first request (:meth:`provide`); routes take it as a FastAPI dependency
    (:attr:`dependency`), code off the dependency machinery reads it with :meth:`of`.
    """

    __slots__ = ("dependency", "name")

    def __init__(self, name: str) -> None:
        """A slot stored as ``app.state.<name>``."""
        self.name = name

        async def dependency(conn: HTTPConnection) -> T:
            value: T = getattr(conn.app.state, name)
            return value

        dependency.__name__ = dependency.__qualname__ = f"get_{name}"
        #: the FastAPI dependency (async: FastAPI runs sync dependencies in a thread)
        self.dependency: Callable[[HTTPConnection], Awaitable[T]] = dependency

    def provide(self, app: Starlette, value: T) -> None:
        """Hand ``value`` out (the composition root, in the lifespan)."""
        setattr(app.state, self.name, value)

    def of(self, app: Starlette) -> T:
        """The object handed out by ``app``'s lifespan."""
        value: T = getattr(app.state, self.name)
        return value


@dataclass(frozen=True, slots=True)
class DeviceRevoked:
    """Who is told that a device's credentials were revoked; fixed by the composition root.

    Called after the revocation has committed (unpair, token revocation), so a hook's
    failure is logged and never undoes it; one failing hook stops no other.
    """

    hooks: tuple[DeviceHook, ...] = ()

    @classmethod
    def of(cls, hooks: Iterable[DeviceHook]) -> DeviceRevoked:
        """The hooks, run in this order."""
        return cls(tuple(hooks))

    async def __call__(self, device_id: uuid.UUID) -> None:
        """Run every hook for ``device_id``."""
        for hook in self.hooks:
            try:
                await hook(device_id)
            except Exception:
                _LOGGER.exception("revocation hook for device %s failed", device_id)
