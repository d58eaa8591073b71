"""Fixtures of the tunnel tests: short intervals, and the Go tunnel peer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.gopeer import build_tunnel_peer
from testkit.live import LiveServer
from visiona.kit.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short status interval and keepalive so status changes show within a test; more
    proxied requests in flight per device than the default 8 (the concurrency tests
    send 16 at once; the bound itself is tested in tests/agent/test_admission.py)."""
    return settings.model_copy(
        update={
            "tunnel_status_interval": 0.2,
            "tunnel_ping_interval": 0.2,
            "tunnel_ping_timeout": 0.5,
            "proxy_response_timeout": 1.0,
            "proxy_max_inflight_per_device": 64,
        }
    )


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
