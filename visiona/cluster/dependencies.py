"""What the cluster hands to routes: this node's :class:`Cluster` and the internal caller.

Internal routes (``/internal/v1/…``, never exposed publicly) belong to the feature
whose work they run (the tunnel's proxy, deployments' transfer); each declares
:data:`InternalCaller` to accept only another node of the cluster: the shared internal
token (constant-time; missing or wrong → 401), the original user's id and the
organisation they act in (``x-visiona-caller-org``; the device is checked against it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from visiona.cluster.forwarding import (
    INTERNAL_PREFIX,
    KEY_HEADER,
    ORG_HEADER,
    TOKEN_HEADER,
    USER_HEADER,
)
from visiona.cluster.service import Cluster
from visiona.kit.errors import UnauthorizedError
from visiona.kit.runtime import Provided

#: This node among the others (filled by the lifespan before the first request).
CLUSTER = Provided[Cluster]("cluster")
ClusterDep = Annotated[Cluster, Depends(CLUSTER.dependency)]


@dataclass(frozen=True, slots=True)
class ForwardedCaller:
    """The user another node acts for, and the organisation they act in."""

    user_id: uuid.UUID
    org_id: uuid.UUID
    api_key_id: uuid.UUID | None = None


def forwarded_caller(user: str | None, org: str | None, key: str | None = None) -> ForwardedCaller:
    """The caller of forwarded headers (401 when the user or organisation id is missing
    or malformed, or the API key id is malformed)."""
    try:
        return ForwardedCaller(
            uuid.UUID(user or ""), uuid.UUID(org or ""), uuid.UUID(key) if key else None
        )
    except ValueError as err:
        raise UnauthorizedError("Missing or invalid forwarded user or organisation.") from err


async def internal_caller(request: Request) -> ForwardedCaller:
    """Check the internal token; return the forwarded caller (401 otherwise)."""
    if not CLUSTER.of(request.app).accepts(request.headers.get(TOKEN_HEADER)):
        raise UnauthorizedError("Missing or invalid internal token.")
    return forwarded_caller(
        request.headers.get(USER_HEADER),
        request.headers.get(ORG_HEADER),
        request.headers.get(KEY_HEADER),
    )


#: The user (and organisation) on whose behalf another node calls this node's internal route.
InternalCaller = Annotated[ForwardedCaller, Depends(internal_caller)]

__all__ = [
    "CLUSTER",
    "INTERNAL_PREFIX",
    "ClusterDep",
    "ForwardedCaller",
    "InternalCaller",
    "forwarded_caller",
    "internal_caller",
]
