"""Fixtures of the deployments tests: the app in uvicorn on loopback (both databases)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.tunnel.support import LiveServer, serve_app
from visiona.app import create_app
from visiona.kit.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No pair rate limit in the way; an agent that does not answer fails within a test."""
    return settings.model_copy(update={"pair_rate_limit": 1_000_000, "deploy_answer_timeout": 2.0})


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
