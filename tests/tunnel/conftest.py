"""Fixtures of the tunnel tests: the app served by uvicorn on a loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.tunnel.gotunnel import build_tunnel_peer
from tests.tunnel.support import LiveServer, serve_app
from visiona.app import create_app
from visiona.kit.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short status interval and keepalive so status changes show within a test."""
    return settings.model_copy(
        update={
            "pair_rate_limit": 1_000_000,
            "tunnel_status_interval": 0.2,
            "tunnel_ping_interval": 0.2,
            "tunnel_ping_timeout": 0.5,
            "proxy_response_timeout": 1.0,
        }
    )


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveServer]:
    """The application in uvicorn on 127.0.0.1 (port 0)."""
    async with serve_app(create_app(settings), settings) as server:
        yield server


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the live server."""
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client


@pytest.fixture
def http_factory() -> Callable[[LiveServer], Any]:
    """Open an HTTP client of a server a test started itself."""

    def factory(server: LiveServer) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        return httpx.AsyncClient(base_url=server.url, timeout=30)

    return factory


@pytest.fixture(scope="session")
def go_tunnel_peer() -> Path:
    """The Go tunnel peer (agent and cloud stand-in), built once per test session."""
    return build_tunnel_peer()
