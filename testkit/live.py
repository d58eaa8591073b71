"""The one live-server helper: an application served by uvicorn on a loopback port.

:func:`serve_app` runs it in the caller's event loop (async tests, tunnels);
:func:`serve_in_thread` runs the same server in a background thread for code that
blocks (the synchronous CLI client, memory probes). Both bind 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Generic

import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from typing_extensions import TypeVar

from visiona.kit.serve import server_config
from visiona.kit.settings import Settings
from visiona.wire import API_PREFIX, TUNNEL_PATH

#: The served application: the visionA app, or any Starlette app (a device's service).
AppT = TypeVar("AppT", bound=Starlette, default=FastAPI)


@dataclass(frozen=True)
class LiveServer(Generic[AppT]):
    """An application served by uvicorn on a loopback port."""

    app: AppT
    port: int

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The tunnel endpoint's ``ws://`` URL."""
        return f"ws://127.0.0.1:{self.port}{API_PREFIX}{TUNNEL_PATH}"


def _server(app: Starlette, settings: Settings | None = None) -> uvicorn.Server:
    """With ``settings``, configured exactly as ``visiona serve`` does it
    (:func:`visiona.kit.serve.server_config`); without, as a plain uvicorn (a device)."""
    if settings is not None:
        configured = server_config(app, settings, host="127.0.0.1", port=0)
        configured.timeout_graceful_shutdown = 5
        return uvicorn.Server(configured)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ws="websockets-sansio",
        ws_max_size=16 * 1024 * 1024,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def _port(server: uvicorn.Server) -> int:
    return int(server.servers[0].sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def serve_app(app: AppT, settings: Settings | None = None) -> AsyncIterator[LiveServer[AppT]]:
    """Run ``app`` (lifespan included) in uvicorn on 127.0.0.1, port 0, in this event loop."""
    server = _server(app, settings)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield LiveServer(app=app, port=_port(server))
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def serve_in_thread(
    app: AppT, settings: Settings | None = None, *, timeout: float = 30
) -> Iterator[LiveServer[AppT]]:
    """Run ``app`` like :func:`serve_app`, in a background thread with its own loop."""
    server = _server(app, settings)
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the live server did not start")
        time.sleep(0.01)
    try:
        yield LiveServer(app=app, port=_port(server))
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
