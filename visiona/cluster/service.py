"""The cluster's one primitive: run something against the node that holds device X.

:class:`Cluster` is this node among the others. Features never ask the registry or
the forwarder themselves; they call :meth:`Cluster.at_device` with what to do here
(this node holds the device's tunnel, or no node does: ``here`` decides, usually
"offline") and what to do one hop away (another node holds it: ``there`` gets a
:class:`Peer`). The proxy, deployments and whatever comes later (fleet rollouts, TCP
forwarding, a node-to-node link) all go through it, and a call that arrives from
another node is checked by :func:`visiona.cluster.dependencies.internal_caller`.

A single node (nothing configured) is a plain :class:`Cluster`: everything is here.
A clustered node is a :class:`ClusterNode`: the Redis registry says which node holds
a tunnel; the forwarder carries the one hop. Both are built by the composition root
(:mod:`visiona.app`) before the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from visiona.cluster.forwarding import Forwarder, Handed, token_matches
from visiona.cluster.linkserver import LinkHandlers
from visiona.cluster.linkwire import proof
from visiona.cluster.registry import TunnelRegistry

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from starlette.requests import Request
    from starlette.responses import Response

    from visiona.cluster.registry import Owner
    from visiona.kit.settings import Settings
    from visiona.yamux import Stream

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


class Peer:
    """Another node, one hop away, that holds a device's tunnel."""

    __slots__ = ("_forwarder", "owner")

    def __init__(self, owner: Owner, forwarder: Forwarder) -> None:
        """The node ``owner``, reached through ``forwarder``."""
        self.owner = owner
        self._forwarder = forwarder

    async def proxy(
        self,
        request: Request,
        *,
        device_id: uuid.UUID,
        target: bytes,
        prefix: str,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        api_key_id: uuid.UUID | None = None,
    ) -> Response:
        """Relay ``request`` to the node over the link (a ``proxy`` stream), streamed both ways."""
        return await self._forwarder.proxy(
            self.owner,
            request,
            device_id=device_id,
            target=target,
            prefix=prefix,
            user_id=user_id,
            org_id=org_id,
            api_key_id=api_key_id,
        )

    def internal_headers(
        self,
        *,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        client: str | None,
        api_key_id: uuid.UUID | None = None,
    ) -> dict[str, str]:
        """The headers a call of another kind (a WebSocket) to the node's internal routes
        carries: the internal token, the original user, their organisation and the client's
        address."""
        return self._forwarder.internal_headers(
            user_id=user_id, org_id=org_id, client=client, api_key_id=api_key_id
        )

    async def open_stream(self, head: dict[str, Any]) -> Stream:
        """A stream to the node, of the kind ``head["kind"]`` with ``head`` written; its
        handler there (:meth:`LinkHandlers.stream`) answers on it. Raises
        :class:`~visiona.cluster.linkexchange.NodeUnreachableError` (502)."""
        return await self._forwarder.open_stream(self.owner, head)

    async def call(
        self, path: str, *, user_id: uuid.UUID, org_id: uuid.UUID, body: dict[str, Any]
    ) -> Handed:
        """Hand ``body`` to the node's handler of ``path`` (named as the internal route
        under ``/internal/v1``) over the link; wait for its answer."""
        return await self._forwarder.call(
            self.owner, path, user_id=user_id, org_id=org_id, body=body
        )


class Cluster:
    """A single node: every device's tunnel is here or nowhere."""

    #: this node's id in the cluster (None on a single node)
    node_id: str | None = None
    #: how long a lease lives when its node stops renewing it (None on a single node)
    lease_ttl: float | None = None

    def __init__(self, holds: Callable[[uuid.UUID], bool]) -> None:
        """``holds(device_id)``: whether this node holds the device's tunnel now (a
        cluster node asks the registry only when it does not)."""
        self._holds = holds
        #: what this node does with the streams other nodes open on their links to it
        #: (the features' handlers, registered by the composition root; unused alone)
        self.handlers = LinkHandlers()

    async def at_device(
        self,
        device_id: uuid.UUID,  # noqa: ARG002 - a single node holds every tunnel there is
        *,
        here: Callable[[], Awaitable[T]],
        there: Callable[[Peer], Awaitable[T]],  # noqa: ARG002 - no other node
    ) -> T:
        """Run ``here`` when this node holds the device's tunnel or no node does, else
        ``there`` with the node holding it (one hop; the registry away counts as none).

        Alone, every tunnel there is is here: ``here`` runs (and decides "offline").
        """
        return await here()

    async def peer_holding(self, device_id: uuid.UUID) -> Peer | None:  # noqa: ARG002 - alone
        """The other node holding the device's tunnel, or None."""
        return None

    def accepts(self, token: str | None) -> bool:  # noqa: ARG002 - no other node calls
        """Whether ``token`` is the cluster's internal token (never on a single node)."""
        return False

    @contextlib.asynccontextmanager
    async def running(self, work_id: uuid.UUID) -> AsyncIterator[None]:  # noqa: ARG002
        """Hold a run lease on ``work_id`` while the block runs (cluster only)."""
        yield

    async def running_of(self, work_ids: list[uuid.UUID]) -> set[uuid.UUID]:  # noqa: ARG002
        """The ids among ``work_ids`` a live node holds a run lease on."""
        return set()

    async def close(self) -> None:
        """Release what the node holds (nothing on a single node)."""


class ClusterNode(Cluster):
    """A node of a cluster: the registry, the forwarder and the internal token."""

    def __init__(
        self,
        holds: Callable[[uuid.UUID], bool],
        registry: TunnelRegistry,
        forwarder: Forwarder,
        token: str,
    ) -> None:
        """This node as ``registry`` names it; ``forwarder`` reaches the others."""
        super().__init__(holds)
        self.registry = registry
        self.forwarder = forwarder
        self._token = token
        self.node_id = registry.node_id
        self.lease_ttl = registry.ttl

    async def at_device(
        self,
        device_id: uuid.UUID,
        *,
        here: Callable[[], Awaitable[T]],
        there: Callable[[Peer], Awaitable[T]],
    ) -> T:
        """This node's tunnel first; else the registry's owner, one hop away; else here."""
        if not self._holds(device_id):
            peer = await self.peer_holding(device_id)
            if peer is not None:
                return await there(peer)
        return await here()

    async def peer_holding(self, device_id: uuid.UUID) -> Peer | None:
        """The other node holding the device's tunnel, or None (none, or Redis away)."""
        try:
            owner = await self.registry.owner(device_id)
        except Exception as err:  # noqa: BLE001 - Redis away: answer from this node alone
            _LOGGER.warning("cluster: registry lookup failed: %s", type(err).__name__)
            return None
        if owner is None or owner.node_id == self.registry.node_id:
            return None
        return Peer(owner, self.forwarder)

    def accepts(self, token: str | None) -> bool:
        """Compare with the internal token in constant time."""
        return token_matches(self._token, token)

    def link_proof(self, *, dialer: bool, dialer_nonce: bytes, acceptor_nonce: bytes) -> bytes:
        """A node link's proof of the internal token over both nonces (the token itself
        never leaves this object; docs/tunnel-protocol.md §18)."""
        return proof(
            self._token, dialer=dialer, dialer_nonce=dialer_nonce, acceptor_nonce=acceptor_nonce
        )

    @contextlib.asynccontextmanager
    async def running(self, work_id: uuid.UUID) -> AsyncIterator[None]:
        """Hold ``work_id``'s run lease in Redis (renewed) while the block runs."""
        registry = self.registry

        async def renew() -> None:
            while True:
                await asyncio.sleep(registry.ttl / 3)
                try:
                    await registry.renew_run(work_id)
                except Exception as err:  # noqa: BLE001 - Redis away: try again next time
                    _LOGGER.warning(
                        "cluster: run lease of %s not renewed: %s", work_id, type(err).__name__
                    )

        try:
            await registry.claim_run(work_id)
        except Exception as err:  # noqa: BLE001 - Redis away: a sweep may fail it; logged
            _LOGGER.warning("cluster: run lease of %s not taken: %s", work_id, type(err).__name__)
        renewing = asyncio.get_running_loop().create_task(renew())
        try:
            yield
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            try:
                await registry.release_run(work_id)
            except Exception as err:  # noqa: BLE001 - it expires by itself
                _LOGGER.warning(
                    "cluster: run lease of %s not released: %s", work_id, type(err).__name__
                )

    async def running_of(self, work_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """The ids among ``work_ids`` a live node holds a run lease on."""
        return await self.registry.running(work_ids)

    async def close(self) -> None:
        """Close the links to the other nodes and theirs to this one (the registry's
        revocation listener is the composition root's to stop, before the hub closes)."""
        await self.forwarder.close()


def node_identity(settings: Settings, bound_url: str | None) -> tuple[str, str]:
    """This node's id (random per start when unset) and the URL the others reach it at."""
    node_id = settings.node_id or f"node-{uuid.uuid4().hex[:12]}"
    url = settings.node_url or bound_url or f"http://{settings.host}:{settings.port}"
    return node_id, url.rstrip("/")


def build_registry(settings: Settings, redis: Redis | None) -> TunnelRegistry | None:
    """The node's view of the tunnel registry, or None for a single node."""
    if not settings.clustered or redis is None or settings.internal_token is None:
        return None
    node_id, url = node_identity(settings, None)
    ttl = 3 * settings.tunnel_ping_interval + settings.tunnel_ping_timeout
    _LOGGER.info("cluster: node %s at %s (lease ttl %.1fs)", node_id, url, ttl)
    return TunnelRegistry(redis, node_id=node_id, node_url=url, ttl=ttl)


def build_cluster(
    settings: Settings, registry: TunnelRegistry | None, holds: Callable[[uuid.UUID], bool]
) -> Cluster:
    """This node among the others: a :class:`ClusterNode` with a registry, else alone."""
    if registry is None or settings.internal_token is None:
        return Cluster(holds)
    token = settings.internal_token.get_secret_value()
    forwarder = Forwarder(token, settings.cluster_connect_timeout, node_id=registry.node_id)
    return ClusterNode(holds, registry, forwarder, token)
