"""What the cluster hands to routes: this node's :class:`Cluster` and the internal caller.

Internal routes (``/internal/v1/…``, never exposed publicly) belong to the feature
whose work they run (the tunnel's proxy, deployments' transfer); each declares
:data:`InternalCaller` to accept only another node of the cluster: the shared internal
token (constant-time; missing or wrong → 401) and the original user's id.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from visiona.cluster.forwarding import INTERNAL_PREFIX, TOKEN_HEADER, USER_HEADER
from visiona.cluster.service import Cluster
from visiona.kit.errors import UnauthorizedError
from visiona.kit.runtime import Provided

#: This node among the others (filled by the lifespan before the first request).
CLUSTER = Provided[Cluster]("cluster")
ClusterDep = Annotated[Cluster, Depends(CLUSTER.dependency)]


async def internal_caller(request: Request) -> uuid.UUID:
    """Check the internal token; return the forwarded user's id (401 otherwise)."""
    if not CLUSTER.of(request.app).accepts(request.headers.get(TOKEN_HEADER)):
        raise UnauthorizedError("Missing or invalid internal token.")
    try:
        return uuid.UUID(request.headers.get(USER_HEADER, ""))
    except ValueError as err:
        raise UnauthorizedError("Missing or invalid forwarded user.") from err


#: The user on whose behalf another node calls this node's internal route.
InternalCaller = Annotated[uuid.UUID, Depends(internal_caller)]

__all__ = ["CLUSTER", "INTERNAL_PREFIX", "ClusterDep", "InternalCaller", "internal_caller"]
