"""Tags in the console (Chromium): shown and edited on the device page, and the device
list filtered by a tag selector kept in the URL."""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx
from playwright.sync_api import Page, expect

from tests.support.console import API, Live, Watch, create_device, register, sign_in


def test_the_device_page_shows_the_tags_and_saves_new_ones(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    device = create_device(http, account, "Tagged dongle", "TAG-1")
    sign_in(page.context, live, account)
    page.goto(f"/devices/{device['id']}")
    tag_list = page.locator('[data-region="tag-list"]')
    expect(tag_list).to_contain_text("chip=kl520")  # built in, read-only
    expect(tag_list.locator(".builtin")).to_have_count(2)
    expect(page.locator("[data-current-model]")).to_have_text("Unknown")

    page.get_by_label("Your tags").fill("site=lab, room=2")
    page.get_by_role("button", name="Save tags").click()
    expect(page.get_by_text("Tags saved.")).to_be_visible()
    expect(tag_list).to_contain_text("site=lab")
    expect(tag_list).to_contain_text("room=2")
    stored = http.get(f"{API}/devices/{device['id']}", headers=account.headers).json()
    assert stored["tags"] == {"chip": "kl520", "room": "2", "site": "lab", "type": "kl520"}

    page.get_by_label("Your tags").fill("chip=kl720")
    page.get_by_role("button", name="Save tags").click()
    expect(page.locator("#tags-form [data-form-error]")).to_contain_text("built in")
    assert seen.errors_except_expected_statuses(400) == []


def test_the_device_list_filters_by_a_selector_kept_in_the_url(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    lab = create_device(http, account, "Lab one", "SEL-1")
    create_device(http, account, "Warehouse one", "SEL-2")
    http.put(
        f"{API}/devices/{lab['id']}/tags",
        json={"tags": {"site": "lab"}},
        headers=account.headers,
    ).raise_for_status()
    sign_in(page.context, live, account)
    page.goto("/devices")
    page.get_by_label("Tag selector").fill("site=lab,chip in (kl520)")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"selector=site%3Dlab%2Cchip"))
    expect(page.get_by_role("link", name="Lab one")).to_be_visible()
    expect(page.get_by_role("link", name="Warehouse one")).to_have_count(0)
    expect(page.get_by_role("row").filter(has_text="Lab one")).to_contain_text("site=lab")

    page.goto("/devices?selector=" + quote("!site"))
    expect(page.get_by_label("Tag selector")).to_have_value("!site")
    expect(page.get_by_role("link", name="Warehouse one")).to_be_visible()
    expect(page.get_by_role("link", name="Lab one")).to_have_count(0)

    page.goto("/devices?selector=" + quote("site in lab"))
    expect(page.locator("[data-selector-error]")).to_contain_text("position 8")
    expect(page.get_by_role("link", name="Lab one")).to_be_visible()  # not applied
    assert seen.errors == []
