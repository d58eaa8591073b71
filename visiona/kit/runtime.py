"""What the application holds while it runs: built from settings in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uuid

    from redis.asyncio import Redis

    from visiona.audit.retention import Pruner
    from visiona.auth.sessions import SessionStore
    from visiona.cluster.service import Cluster
    from visiona.kit.database import Database
    from visiona.kit.metrics import Metrics
    from visiona.kit.ratelimit import RateLimiter
    from visiona.kit.settings import Settings
    from visiona.models.storage import ObjectStorage
    from visiona.tunnel.hub import TunnelHub

_LOGGER = logging.getLogger(__name__)

DeviceHook = Callable[["uuid.UUID"], Awaitable[None]]
DrainHook = Callable[[], Awaitable[None]]


@dataclass
class Runtime:
    """Live clients and stores of one running application."""

    settings: Settings
    db: Database
    sessions: SessionStore
    limiter: RateLimiter
    metrics: Metrics
    redis: Redis | None = None
    # Model files (the models feature); built from settings in the lifespan.
    model_storage: ObjectStorage | None = None
    # Called after a device's credentials are revoked and committed (unpair, token
    # revocation); the tunnel registers one to close the live tunnel.
    on_device_revoked: list[DeviceHook] = field(default_factory=list)
    # Run when the server is asked to stop, before it stops accepting and closes its
    # connections (visiona.kit.serve.NodeServer): the tunnels drain.
    on_drain: list[DrainHook] = field(default_factory=list)
    # This node's agent tunnels (the tunnel feature); built in the lifespan.
    hub: TunnelHub | None = None
    # This node's cluster membership (registry, forwarder); None on a single node.
    cluster: Cluster | None = None
    # Deletes expired audit events (the audit feature); started in the lifespan.
    audit_pruner: Pruner | None = None

    async def device_revoked(self, device_id: uuid.UUID) -> None:
        """Run every revocation hook for ``device_id``; one failing hook stops no other.

        Called after the revocation has committed, so a hook's failure is logged and
        never undoes it.
        """
        for hook in self.on_device_revoked:
            try:
                await hook(device_id)
            except Exception:
                _LOGGER.exception("revocation hook for device %s failed", device_id)
