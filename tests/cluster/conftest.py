"""Fixtures shared by the cluster tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from testkit.device_service import device_app
from testkit.live import serve_app


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The devices' local HTTP service on a loopback port (a module may define its own)."""
    async with serve_app(device_app()) as service:
        yield service.port
