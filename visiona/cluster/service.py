"""The cluster's routing rule and its life cycle: local first, then the registry.

:func:`start_cluster` (lifespan) builds the registry, the forwarder and the revocation
listener when the node is clustered; :func:`forward_proxy` is the routing rule the
proxy applies when this node has no tunnel for the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from visiona.cluster.forwarding import Forwarder
from visiona.cluster.registry import TunnelRegistry

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from visiona.kit.database import Database
    from visiona.kit.runtime import Runtime
    from visiona.kit.settings import Settings

_LOGGER = logging.getLogger(__name__)


@dataclass
class Cluster:
    """This node's membership: its registry view, its forwarder and its token."""

    registry: TunnelRegistry
    forwarder: Forwarder
    token: str
    _sweeper: asyncio.Task[None] | None = field(default=None, repr=False)

    def start_sweeping(self, db: Database) -> None:
        """Fail, once per lease TTL, the deployments a stopped node left unfinished."""
        from visiona.cluster.deployments import sweep_loop  # noqa: PLC0415 - import cycle

        self._sweeper = asyncio.get_running_loop().create_task(sweep_loop(db, self))

    async def close(self) -> None:
        """Stop sweeping and listening for revocations (the forwarder closes later)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.registry.close()


def node_identity(settings: Settings, bound_url: str | None) -> tuple[str, str]:
    """This node's id (random per start when unset) and the URL the others reach it at."""
    node_id = settings.node_id or f"node-{uuid.uuid4().hex[:12]}"
    url = settings.node_url or bound_url or f"http://{settings.host}:{settings.port}"
    return node_id, url.rstrip("/")


def build_cluster(runtime: Runtime, bound_url: str | None) -> Cluster | None:
    """The node's cluster membership, or None for a single node (nothing configured)."""
    settings = runtime.settings
    if not settings.clustered or runtime.redis is None or settings.internal_token is None:
        return None
    node_id, url = node_identity(settings, bound_url)
    ttl = 3 * settings.tunnel_ping_interval + settings.tunnel_ping_timeout
    registry = TunnelRegistry(runtime.redis, node_id=node_id, node_url=url, ttl=ttl)
    token = settings.internal_token.get_secret_value()
    forwarder = Forwarder(token, settings.cluster_connect_timeout, node_id=node_id)
    cluster = Cluster(registry, forwarder, token)
    runtime.cluster = cluster
    _LOGGER.info("cluster: node %s at %s (lease ttl %.1fs)", node_id, url, ttl)
    return cluster


def cluster_of(runtime: Runtime) -> Cluster | None:
    """The node's cluster membership, if clustered."""
    return runtime.cluster


async def forward_proxy(
    runtime: Runtime,
    request: Request,
    *,
    device_id: uuid.UUID,
    target: bytes,
    prefix: str,
    user_id: uuid.UUID,
) -> Response | None:
    """Forward to the node holding the device's tunnel; None when no other node holds it."""
    cluster = cluster_of(runtime)
    if cluster is None:
        return None
    try:
        owner = await cluster.registry.owner(device_id)
    except Exception as err:  # noqa: BLE001 - Redis away: answer from this node alone
        _LOGGER.warning("cluster: registry lookup failed: %s", type(err).__name__)
        return None
    if owner is None or owner.node_id == cluster.registry.node_id:
        return None
    return await cluster.forwarder.proxy(
        owner, request, device_id=device_id, target=target, prefix=prefix, user_id=user_id
    )
