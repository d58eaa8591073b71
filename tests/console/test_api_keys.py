"""The API keys page in Chromium: an admin creates a key that is shown once, uses it
against the API, revokes it; a viewer has no link and is refused."""

from __future__ import annotations

import re
import time

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.support.console import (
    API,
    Live,
    Watch,
    api_json,
    create_org,
    join,
    register,
    sign_in,
)

MODEL = b"\x00nef" * 1024


def _switch(page: Page, org_id: str) -> None:
    with page.expect_navigation():
        page.get_by_label("Organisation").select_option(org_id)
    expect(page.get_by_label("Organisation")).to_have_value(org_id)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_an_admin_creates_a_key_shown_once_that_works_until_revoked(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    owner, admin = register(http, "Olga Owner"), register(http, "Adam Admin")
    team = create_org(http, owner, "Pipeline team")
    join(http, owner, team, admin, "admin")
    sign_in(page.context, live, admin)
    page.goto("/devices")
    _switch(page, team)
    page.get_by_role("link", name="API keys").click()
    expect(page).to_have_url(re.compile(r"/api-keys$"))
    expect(page.get_by_role("heading", name="None created yet")).to_be_visible()

    # mistakes are told in words, before anything is sent
    page.get_by_label("Expires after (days)").fill("400")
    page.get_by_role("button", name="Create key").click()
    error = page.locator("#api-key-form [data-form-error]")
    expect(error).to_contain_text("Name is required")
    expect(error).to_contain_text("Scopes: choose at least one.")
    expect(error).to_contain_text("whole number of days from 1 to 365")

    page.get_by_label("Name", exact=True).fill("CI uploads")
    page.get_by_label("Expires after (days)").fill("30")
    page.get_by_role("checkbox", name=re.compile(r"^models:write")).check()
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("[data-new-key]")
    expect(shown).to_be_visible()
    expect(shown).to_contain_text("shown only once and cannot be shown again")
    expect(error).to_be_hidden()
    key = page.locator("[data-new-key-value]").inner_text()
    assert re.fullmatch(r"vak_\S+", key), key
    expect(page.get_by_role("button", name="Copy key")).to_be_visible()

    # the list shows the key's prefix, never the key
    row = page.locator("tr[data-key-id]").filter(has_text="CI uploads")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("models:write")
    expect(row).to_contain_text("Adam Admin")
    expect(row).to_contain_text("Active")
    prefix = row.locator("td.mono").inner_text().rstrip("…")
    assert key.startswith(prefix)
    assert len(prefix) < len(key)
    assert key not in page.locator("[data-region=keys]").inner_html()
    page.reload()
    expect(page.locator("[data-new-key]")).to_be_hidden()
    assert key not in page.content()

    # the key works against the API, in the team it was made in
    uploaded = http.post(
        f"{API}/models",
        data={"target_chip": "kl520", "name": "from-ci"},
        files={"file": ("from-ci.nef", MODEL, "application/octet-stream")},
        headers=_bearer(key),
    )
    assert api_json(uploaded, 201)["name"] == "from-ci"
    models = api_json(http.get(f"{API}/models", headers=_bearer(key)), 200)["items"]
    assert [m["name"] for m in models] == ["from-ci"]
    listed = api_json(http.get(f"{API}/api-keys", headers=_bearer(key)), 403)
    assert listed["error"]["code"] == "forbidden"  # models:write does not manage keys

    # revoked after a confirmation: refused within a second
    row = page.locator("tr[data-key-id]").filter(has_text="CI uploads")
    row.get_by_role("button", name="Revoke CI uploads").click()
    expect(page.locator("#confirm-dialog")).to_contain_text("Revoke “CI uploads”?")
    page.locator("#confirm-ok").click()
    expect(page.get_by_text("API key “CI uploads” revoked.")).to_be_visible()
    deadline = time.monotonic() + 1.0
    status = http.get(f"{API}/models", headers=_bearer(key)).status_code
    while status != 401 and time.monotonic() < deadline:
        time.sleep(0.05)
        status = http.get(f"{API}/models", headers=_bearer(key)).status_code
    assert status == 401
    row = page.locator("tr[data-key-id]").filter(has_text="CI uploads")
    expect(row).to_contain_text("Revoked")
    expect(row.get_by_role("button", name="Revoke CI uploads")).to_have_count(0)
    assert seen.errors_except_expected_statuses() == []


def test_a_viewer_has_no_api_keys_link_and_is_refused_the_page(
    page: Page, seen: Watch, http: httpx.Client, live: Live, browser: Browser
) -> None:
    owner, viewer = register(http, "Owen Owner"), register(http, "Vic Viewer")
    team = create_org(http, owner, "Watchers")
    join(http, owner, team, viewer, "viewer")
    sign_in(page.context, live, viewer)
    page.goto("/devices")
    # their personal organisation: they own it, so they manage its keys
    expect(page.get_by_role("link", name="API keys")).to_be_visible()
    _switch(page, team)
    expect(page.get_by_role("link", name="Members")).to_be_visible()
    expect(page.get_by_role("link", name="API keys")).to_have_count(0)

    refused = page.goto("/api-keys")
    assert refused is not None
    assert refused.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("viewer")
    expect(page.get_by_role("alert")).to_contain_text("api_keys")
    expect(page.locator("#api-key-form")).to_have_count(0)
    assert seen.errors_except_expected_statuses(403) == []


def test_switching_on_the_api_keys_page_to_an_organisation_without_it_goes_to_devices(
    http: httpx.Client, live: Live
) -> None:
    owner, viewer = register(http), register(http)
    team = create_org(http, owner, "Keyless")
    join(http, owner, team, viewer, "viewer")
    cookies = {"Cookie": f"{live.settings.cookie_name}={viewer.token}", "Origin": live.url}
    switched = http.post("/org", data={"org_id": team, "next": "/api-keys"}, headers=cookies)
    assert switched.status_code == 303
    assert switched.headers["location"] == "/devices"
    mine = create_org(http, viewer, "Mine with keys")
    stays = http.post("/org", data={"org_id": mine, "next": "/api-keys"}, headers=cookies)
    assert stays.headers["location"] == "/api-keys"


def test_a_refusal_by_the_server_is_told_in_words(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    owner, admin = register(http, "Ola Owner"), register(http, "Ada Demoted")
    team = create_org(http, owner, "Shrinking team")
    join(http, owner, team, admin, "admin")
    sign_in(page.context, live, admin)
    page.goto("/devices")
    _switch(page, team)
    page.goto("/api-keys")
    # demoted while the page is open: the form is still there, the server refuses
    admin_id = api_json(http.get(f"{API}/auth/me", headers=admin.headers), 200)["id"]
    demoted = http.patch(
        f"{API}/orgs/{team}/members/{admin_id}", json={"role": "operator"}, headers=owner.headers
    )
    api_json(demoted, 200)
    as_admin = {**admin.headers, "X-Visiona-Org": team}
    deadline = time.monotonic() + 1.0
    while http.get(f"{API}/api-keys", headers=as_admin).status_code != 403:
        assert time.monotonic() < deadline, "the demotion did not take effect"
        time.sleep(0.05)
    page.get_by_label("Name", exact=True).fill("Too late")
    page.get_by_role("checkbox", name=re.compile(r"^read")).check()
    page.get_by_role("button", name="Create key").click()
    error = page.locator("#api-key-form [data-form-error]")
    expect(error).to_contain_text("The key was not created: Permission 'api_keys' is required")
    expect(error).to_contain_text("operator role")
    expect(page.locator("[data-new-key]")).to_be_hidden()
    assert seen.errors_except_expected_statuses(403) == []
