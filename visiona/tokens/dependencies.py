"""Who is calling from the agent side: the device behind a session token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from visiona.auth.dependencies import bearer_token
from visiona.kit.deps import Conn
from visiona.tokens.service import DeviceIdentity, authenticate_device


async def current_device(request: Request, conn: Conn) -> DeviceIdentity:
    """Authenticate an agent by ``Authorization: Bearer vst_…`` (401 otherwise)."""
    return await authenticate_device(conn, bearer_token(request))


CurrentDevice = Annotated[DeviceIdentity, Depends(current_device)]
