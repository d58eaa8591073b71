"""The console follows the event stream (GET /api/v1/events) in Chromium: a device's
status changes on the Devices page when its agent connects, without a reload and
without polling."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from playwright.sync_api import Locator, Page, expect

from tests.support.console import (
    API,
    Live,
    Watch,
    api_json,
    register,
    sign_in,
    start_agent,
    stop_agent,
)


def _row(page: Page, name: str) -> Locator:
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))


def test_the_devices_page_shows_a_new_device_come_online_from_the_event_stream(
    page: Page, seen: Watch, http: httpx.Client, live: Live, workdir: Path
) -> None:
    account = register(http)
    sign_in(page.context, live, account)
    page.goto("/devices")
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("body[data-live=on]")).to_have_count(1, timeout=10_000)
    token = api_json(http.post(f"{API}/pairing-tokens", json={}, headers=account.headers), 201)
    name = f"Streamed {uuid.uuid4().hex[:4]}"
    command = (
        f"visiona agent --server {live.url} --token {token['token']} "
        f"--forward 127.0.0.1:{live.device_port}"
    )
    agent = start_agent(command, workdir, name, f"SN-{uuid.uuid4().hex[:8]}")
    try:
        # a device the list did not show: its rows come again, then the badge follows
        expect(_row(page, name).get_by_text("Online", exact=True)).to_be_visible(timeout=30_000)
        assert page.evaluate("window.__sameDocument") is True
        polls = [url for url in seen.requests if "/devices.json" in url]
        streams = [url for url in seen.requests if "/api/v1/events?" in url]
        assert streams, seen.requests
        agent.terminate()
        agent.wait(30)
        expect(_row(page, name).get_by_text("Offline", exact=True)).to_be_visible(timeout=30_000)
        assert page.evaluate("window.__sameDocument") is True
    finally:
        stop_agent(agent)
    # the rows were fetched once per burst of events, not every few seconds
    assert len(polls) <= 3, polls
    assert seen.errors == []
    assert seen.foreign() == []
