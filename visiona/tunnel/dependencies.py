"""What the tunnel feature hands to routes: this node's hub and the proxy's relay.

Both are built by the composition root (:mod:`visiona.app`) in the lifespan, before
the first request. The proxy route runs off FastAPI's dependency solving
(:mod:`visiona.kit.direct`) and reads :data:`RELAY` with ``RELAY.of(app)``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from visiona.kit.runtime import Provided
from visiona.tunnel.hub import TunnelHub
from visiona.tunnel.relay import Relay

#: This node's live agent tunnels.
HUB = Provided[TunnelHub]("tunnel_hub")
#: Proxied requests: to this node's tunnel of the device, or to the node holding it.
RELAY = Provided[Relay]("tunnel_relay")

HubDep = Annotated[TunnelHub, Depends(HUB.dependency)]
RelayDep = Annotated[Relay, Depends(RELAY.dependency)]
get_hub = HUB.dependency

__all__ = ["HUB", "RELAY", "HubDep", "RelayDep", "get_hub"]
