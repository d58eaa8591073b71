"""Sessions over TCP sockets, via :class:`~visiona.yamux.transport.TcpTransport`."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .config import Config
from .frames import GoAwayCode
from .session import Session
from .transport import TcpTransport

_LOGGER = logging.getLogger(__name__)

SessionHandler = Callable[[Session], Awaitable[None] | None]


async def open_tcp_session(
    host: str, port: int, *, client: bool = True, config: Config | None = None
) -> Session:
    """Connect to ``host:port`` and run a session over the socket (client side by default)."""
    loop = asyncio.get_running_loop()
    _, transport = await loop.create_connection(TcpTransport, host, port)
    return Session(transport, client=client, config=config)


class _ServerSide(TcpTransport):
    """A transport that starts a session as soon as its socket is connected."""

    def __init__(
        self, handler: SessionHandler, client: bool, config: Config | None, tasks: set[Any]
    ) -> None:
        """Remember what to do with each new session."""
        super().__init__()
        self._handler = handler
        self._client = client
        self._config = config
        self._tasks = tasks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the session and hand it to the handler (asyncio callback)."""
        super().connection_made(transport)
        session = Session(self, client=self._client, config=self._config)
        try:
            result = self._handler(session)
        except Exception:
            _LOGGER.exception("yamux: session handler failed")
            session.abort(GoAwayCode.INTERNAL_ERROR)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("yamux: session handler failed", exc_info=task.exception())


async def serve_tcp(
    handler: SessionHandler,
    host: str,
    port: int,
    *,
    client: bool = False,
    config: Config | None = None,
) -> asyncio.Server:
    """Listen on ``host:port``; run a session (server side by default) per connection.

    ``handler(session)`` is called for each; when it returns an awaitable, that is run
    as a task (a reference is kept until it ends).
    """
    loop = asyncio.get_running_loop()
    tasks: set[Any] = set()
    return await loop.create_server(lambda: _ServerSide(handler, client, config, tasks), host, port)
