"""Fixtures of the browser tests: one live server and one Chromium for all of them.

Every test gets a fresh browser context and page (pytest-playwright's ``context``
and ``page``). Playwright itself, the browser and the server are scoped to this
package, not the session: Playwright's sync API keeps an event loop current in
the test thread while it runs, which the rest of the suite must not inherit.
``seen`` records every request and console error; at the end of each test no
request may have left the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.support.console import MODEL_MAX_BYTES, Live, Watch, launch_args, live_server, watch
from tests.support.settings import make_settings


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The console server on SQLite (the browser does not care about the database)."""
    data = tmp_path_factory.mktemp("console")
    url = f"sqlite+aiosqlite:///{data / 'visiona.db'}"
    settings = make_settings(
        database_url=url,
        data_dir=data,
        redis_url=None,
        tunnel_status_interval=2.0,
        tunnel_ping_interval=1.0,
        model_max_bytes=MODEL_MAX_BYTES,
    )
    with live_server(settings) as server:
        yield server


@pytest.fixture(scope="package")
def base_url(live: Live) -> str:
    """Relative ``page.goto`` paths resolve against the live server."""
    return live.url


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """Playwright for this package only (its loop is gone again afterwards)."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """One Debian Chromium for every browser test, with a fresh user data dir."""
    chromium = playwright.chromium.launch(**launch_args())
    yield chromium
    chromium.close()


@pytest.fixture(scope="package")
def browser_context_args(base_url: str) -> dict[str, Any]:
    """Each test's context: relative URLs against the live server, a desktop viewport."""
    return {"base_url": base_url, "viewport": {"width": 1280, "height": 800}}


@pytest.fixture
def http(live: Live) -> Iterator[httpx.Client]:
    """An API client of the live server (for setting up data)."""
    with httpx.Client(base_url=live.url, timeout=30) as client:
        yield client


@pytest.fixture
def seen(context: BrowserContext, page: Page, live: Live) -> Iterator[Watch]:
    """What the page requested and printed; nothing may leave the server."""
    record = watch(page, live.url)
    yield record
    assert record.foreign() == [], "requests left the server"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder for an agent's files."""
    return tmp_path
