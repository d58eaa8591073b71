"""Fixtures of the agent tests: SQLite only, short intervals, and a device service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from testkit.device_service import device_app
from testkit.live import serve_app
from visiona.kit.settings import Settings


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The agent does not care about the server's database: SQLite is enough here."""
    return str(request.param)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A short status interval."""
    return settings.model_copy(update={"tunnel_status_interval": 0.2})


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The device's local HTTP service on a loopback port."""
    async with serve_app(device_app()) as service:
        yield service.port
