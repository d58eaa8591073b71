"""Fixtures of the agent tests: the server (uvicorn, loopback) and a device service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.tunnel.device_service import device_app
from tests.tunnel.support import LiveServer, serve_app
from visiona.app import create_app
from visiona.kit.settings import Settings


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The agent does not care about the server's database: SQLite is enough here."""
    return str(request.param)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No pair rate limit in the way; a short status interval."""
    return settings.model_copy(update={"pair_rate_limit": 1_000_000, "tunnel_status_interval": 0.2})


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveServer]:
    """The server in uvicorn on 127.0.0.1 (port 0)."""
    async with serve_app(create_app(settings), settings) as server:
        yield server


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the live server."""
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The device's local HTTP service on a loopback port."""
    async with serve_app(device_app()) as service:  # type: ignore[arg-type] - any ASGI app
        yield service.port
