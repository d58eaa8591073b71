"""The audit trail in Chromium: a device's history on its page, and the Activity page."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.support.console import (
    API,
    Live,
    Watch,
    api_json,
    pair_device,
    register,
    sign_in,
    start_agent,
    stop_agent,
    upload_model,
)


def test_the_device_page_shows_who_paired_and_renamed_it(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    device = pair_device(http, account, "Bench dongle")
    device_id = device["device_id"]
    api_json(
        http.patch(
            f"{API}/devices/{device_id}", json={"name": "Lab dongle"}, headers=account.headers
        ),
        200,
    )
    sign_in(page.context, live, account)
    page.goto(f"/devices/{device_id}")
    history = page.locator("[data-region=history]")
    expect(history.get_by_role("heading", name="History")).to_be_visible()
    renamed = history.locator("tr[data-action='device.renamed']")
    expect(renamed).to_contain_text("A device was renamed")
    expect(renamed).to_contain_text("from: Bench dongle; to: Lab dongle")
    expect(renamed).to_contain_text("You")
    paired = history.locator("tr[data-action='device.paired']")
    expect(paired).to_contain_text("Lab dongle")  # the device itself acted
    expect(history.locator("tr[data-action='session_token.issued']")).to_have_count(1)
    # newest first
    expect(history.locator("tbody tr").first).to_have_attribute("data-action", "device.renamed")
    assert seen.errors == []


def test_the_activity_page_lists_the_account_and_filters_by_action(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    device = pair_device(http, account, "Kitchen PC")
    bad = http.post(f"{API}/auth/login", json={"email": account.email, "password": "wrong-one!"})
    assert bad.status_code == 401
    sign_in(page.context, live, account)
    page.goto("/devices")
    page.get_by_role("link", name="Activity").click()
    expect(page.get_by_role("heading", name="Activity")).to_be_visible()
    region = page.locator("[data-region=activity]")
    expect(region.locator("tr[data-action='user.registered']")).to_have_count(1)
    failed = region.locator("tr[data-action='user.sign_in_failed']")
    expect(failed).to_contain_text(account.email)
    expect(failed).not_to_contain_text("wrong-one!")
    pairing = region.locator("tr[data-action='device.paired']")
    expect(pairing.get_by_role("link", name="Kitchen PC")).to_have_attribute(
        "href", f"/devices/{device['device_id']}"
    )

    # the filter offers the kinds of event the README names, not the raw dotted codes
    options = page.get_by_label("Show").locator("option").all_inner_texts()
    assert options == [
        "Everything",
        "Sign-ins (failed ones too)",
        "Pairings and devices",
        "Session tokens",
        "Tunnels and remote access",
        "Models",
        "Deployments",
        "Rollouts",
        "Members and invitations",
    ]
    page.get_by_label("Show").select_option(label="Sign-ins (failed ones too)")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(f"{live.url}/activity?action=sign-ins")
    rows = region.locator("tbody tr")
    expect(rows.first).to_be_visible()
    for action in rows.evaluate_all("rows => rows.map(r => r.dataset.action)"):
        assert action.startswith("user."), action
    expect(region.locator("tr[data-action='user.sign_in_failed']")).to_have_count(1)
    # an exact action still works (older links)
    page.goto("/activity?action=device.paired")
    expect(region.locator("tbody tr")).to_have_count(1)
    expect(region.locator("tbody tr")).to_have_attribute("data-action", "device.paired")
    assert seen.errors == []


def test_details_read_as_words_and_nothing_is_cut_off_at_1280_px(
    page: Page, seen: Watch, http: httpx.Client, live: Live, workdir: Path
) -> None:
    account = register(http)
    model = upload_model(http, account, "people-counter", b"\x00" * 5000)
    token = api_json(http.post(f"{API}/pairing-tokens", json={}, headers=account.headers), 201)
    # a real agent comes and goes: tunnel.connected (with no cluster node) and a lost
    # connection are what the raw trail holds
    command = (
        f"visiona agent --server {live.url} --token {token['token']} "
        f"--forward 127.0.0.1:{live.device_port}"
    )
    agent = start_agent(command, workdir, "Wide dongle", f"SN-{uuid.uuid4().hex[:8]}")
    try:
        deadline = time.monotonic() + 60
        device_id = None
        while time.monotonic() < deadline and device_id is None:
            items = http.get(f"{API}/devices", headers=account.headers).json()["items"]
            online = [d for d in items if d["remote_status"] == "online"]
            device_id = online[0]["id"] if online else None
            time.sleep(0.1)  # polling the API, not synchronising on time
        assert device_id is not None, stop_agent(agent)
    finally:
        stop_agent(agent)
    failed = http.post(
        f"{API}/devices/{device_id}/deployments",
        json={"model_id": model["id"]},
        headers=account.headers,
    )
    assert failed.status_code == 502
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page.context, live, account)
    for path in ("/activity", f"/devices/{device_id}", "/models"):
        page.goto(path)
        expect(page.locator("main")).to_be_visible()
        text = page.locator("main").inner_text()
        assert "None" not in text, path
        assert "SessionClosedError" not in text, path
        assert str(model["id"]) not in text, path
        overflow = page.evaluate(
            "() => [document.documentElement.scrollWidth - document.documentElement.clientWidth,"
            " ...[...document.querySelectorAll('.table-wrap')].map("
            "w => w.scrollWidth - w.clientWidth)]"
        )
        assert all(extra <= 0 for extra in overflow), (path, overflow)
    page.goto("/activity")
    requested = page.locator("tr[data-action='deployment.requested']")
    expect(requested).to_contain_text("model: people-counter")
    assert seen.errors_except_expected_statuses(502) == []
