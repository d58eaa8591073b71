"""FastAPI dependencies shared by every feature: the runtime and the unit of work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The application's :class:`Runtime`."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def unit_of_work(request: Request) -> AsyncIterator[AsyncConnection]:
    """One transaction per request: committed when the endpoint returns, else rolled back."""
    async with get_runtime(request).db.transaction() as conn:
        yield conn


# scope="function": the transaction commits before the response is sent, so a
# failed commit is reported to the client instead of being lost.
Conn = Annotated[AsyncConnection, Depends(unit_of_work, scope="function")]


def client_address(request: Request) -> str:
    """The caller's address as seen by this server (proxy headers are not trusted)."""
    return request.client.host if request.client else "unknown"
