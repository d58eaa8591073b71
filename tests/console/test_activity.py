"""The audit trail in Chromium: a device's history on its page, and the Activity page."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.support.console import API, Live, Watch, api_json, pair_device, register, sign_in


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

    page.get_by_label("Show").select_option("device.paired")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(f"{live.url}/activity?action=device.paired")
    expect(region.locator("tbody tr")).to_have_count(1)
    expect(region.locator("tbody tr")).to_have_attribute("data-action", "device.paired")
    assert seen.errors == []
