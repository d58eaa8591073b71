"""Fixtures of the interop tests: the Go peer is built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.gopeer import build_peer


@pytest.fixture(scope="session")
def go_peer() -> Path:
    """Path of the freshly built Go peer (hashicorp/yamux + gorilla/websocket)."""
    return build_peer()
