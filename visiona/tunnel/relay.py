"""The proxy's use case: a request relayed to a device, through this node or one hop away.

:class:`Relay` is built once by the composition root (the hub, the cluster, the
database, the answer timeout) and handed to the proxy routes by
:mod:`visiona.tunnel.dependencies`. :meth:`Relay.to_device` asks the cluster where the
device's tunnel is (:meth:`~visiona.cluster.service.Cluster.at_device`); a request
another node forwards (over the node link, whose ``proxy`` streams the composition
root hands to :meth:`Relay.here`, or to the internal HTTP route of older nodes) runs
through :meth:`Relay.here` (never forwarded again).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from visiona.audit import service as audit
from visiona.devices import service as devices_service
from visiona.tunnel.errors import DeviceOfflineError
from visiona.tunnel.proxy import ProxyExchange, ProxyResponse
from visiona.tunnel.target import sandboxed_headers

if TYPE_CHECKING:
    import uuid

    from starlette.requests import Request
    from starlette.responses import Response

    from visiona.cluster.service import Cluster, Peer
    from visiona.kit.database import Database
    from visiona.tunnel.hub import TunnelHub

_LOGGER = logging.getLogger(__name__)

#: The header the agent puts on the answers its policy gives instead of the local service.
_REFUSED = (b"x-visiona-refused", b"policy")


class Relay:
    """Proxied requests of this node: to the device's tunnel here, or to its node."""

    __slots__ = ("_cluster", "_db", "_hub", "_timeout")

    def __init__(self, hub: TunnelHub, cluster: Cluster, db: Database, timeout: float) -> None:
        """Relay through ``hub``'s tunnels; wait ``timeout`` seconds for a response head."""
        self._hub = hub
        self._cluster = cluster
        self._db = db
        self._timeout = timeout

    async def to_device(
        self,
        request: Request,
        *,
        device_id: uuid.UUID,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        target: bytes,
        prefix: str,
        api_key_id: uuid.UUID | None = None,
    ) -> Response:
        """Through this node's tunnel, or the node holding it, else 502 offline / 404.
        ``api_key_id``: the API key the caller used, if any (audit events name it)."""

        async def here() -> Response:
            return await self.here(
                request,
                device_id=device_id,
                user_id=user_id,
                org_id=org_id,
                target=target,
                prefix=prefix,
                api_key_id=api_key_id,
            )

        async def there(peer: Peer) -> Response:
            return await peer.proxy(
                request,
                device_id=device_id,
                target=target,
                prefix=prefix,
                user_id=user_id,
                org_id=org_id,
                api_key_id=api_key_id,
            )

        return await self._cluster.at_device(device_id, here=here, there=there)

    async def here(
        self,
        request: Request,
        *,
        device_id: uuid.UUID,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        target: bytes,
        prefix: str,
        api_key_id: uuid.UUID | None = None,
    ) -> Response:
        """Proxy through this node's tunnel of the device (no tunnel here → 502 offline;
        another organisation's device → 404)."""
        hub = self._hub
        link = hub.get(device_id)
        if link is None or link.org_id != org_id:
            # unit of work: its own, only when the device is not connected (a proxy holds none)
            async with self._db.transaction() as conn:
                await devices_service.require_device(conn, org_id, device_id)
            raise DeviceOfflineError()
        release = hub.admit(link)  # 429 device_busy, from memory
        exchange = ProxyExchange(
            link.session, request, target, prefix, self._timeout, on_done=release
        )
        try:
            status, headers, framing = await exchange.open()
        except BaseException:
            release()
            raise
        if status == 403 and _REFUSED in headers:
            await self._record_refusal(
                request,
                org_id=org_id,
                actor=audit.Actor.acting(user_id, api_key_id),
                device_id=device_id,
                target=target,
            )
        return ProxyResponse(exchange, status, sandboxed_headers(headers), framing)

    async def _record_refusal(
        self,
        request: Request,
        *,
        org_id: uuid.UUID,
        actor: audit.Actor,
        device_id: uuid.UUID,
        target: bytes,
    ) -> None:
        """Audit ``proxy.forbidden_by_agent`` in its own short transaction (best effort: the
        agent's answer is relayed even when the trail cannot be written)."""
        path = target.split(b"?", 1)[0].decode("ascii", "replace")
        client = request.client.host if request.client else None
        try:
            # unit of work: its own, only when the agent refused (the proxy holds none)
            async with self._db.transaction() as conn:
                await audit.record(
                    conn,
                    "proxy.forbidden_by_agent",
                    actor=actor,
                    org_id=org_id,
                    target_id=device_id,
                    device_id=device_id,
                    detail={"method": request.method, "path": path},
                    client_addr=client,
                )
        except Exception as err:  # noqa: BLE001 - the trail is best effort here; logged
            _LOGGER.warning(
                "audit: refusal of device %s not recorded: %s", device_id, type(err).__name__
            )
