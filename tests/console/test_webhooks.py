"""The webhooks page in Chromium: an admin adds an endpoint (its secret shown once),
sends a test event and finds it in the delivery log, disables it (a notice says why)
and enables it again; a viewer has no link and is refused the page."""

from __future__ import annotations

import base64
import re

import httpx
from playwright.sync_api import Page, expect

from tests.support.console import API, Live, Watch, api_json, create_org, join, register, sign_in

HOOK = "https://hooks.example.com/visiona"


def _switch(page: Page, org_id: str) -> None:
    with page.expect_navigation():
        page.get_by_label("Organisation").select_option(org_id)
    expect(page.get_by_label("Organisation")).to_have_value(org_id)


def test_create_test_event_delivery_log_disable_and_enable_again(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    owner = register(http, "Hana Hooks")
    sign_in(page.context, live, owner)
    page.goto("/devices")
    page.get_by_role("link", name="Webhooks").click()
    expect(page).to_have_url(re.compile(r"/webhooks$"))
    expect(page.get_by_role("heading", name="No endpoints yet")).to_be_visible()

    # mistakes are told in words, before anything is sent
    page.get_by_role("button", name="Create endpoint").click()
    error = page.locator("#webhook-form [data-form-error]")
    expect(error).to_contain_text("URL: enter the http:// or https:// address")
    expect(error).to_contain_text("Events: choose at least one.")
    # and the server's refusals too
    page.get_by_label("Endpoint URL").fill(HOOK)
    page.get_by_label("Other event types").fill("device.exploded")
    page.get_by_role("button", name="Create endpoint").click()
    expect(error).to_contain_text(
        "The endpoint was not created: Unknown event type(s): device.exploded"
    )

    page.get_by_label("Other event types").fill("rollout.failed")
    page.get_by_role("checkbox", name=re.compile(r"^device\.\*")).check()
    page.get_by_label("Description").fill("ops chat")
    page.get_by_role("button", name="Create endpoint").click()
    shown = page.locator("[data-new-secret]")
    expect(shown).to_be_visible()
    expect(shown).to_contain_text("shown only once and cannot be shown again")
    expect(error).to_be_hidden()
    secret = page.locator("[data-new-secret-value]").inner_text()
    assert re.fullmatch(r"whsec_\S+", secret), secret
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    row = page.locator("tr[data-webhook-id]").filter(has_text=HOOK)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("device.*")
    expect(row).to_contain_text("rollout.failed")
    expect(row).to_contain_text("ops chat")
    expect(row).to_contain_text("Enabled")
    assert secret not in page.locator("[data-region=webhooks]").inner_html()
    webhook_id = row.get_attribute("data-webhook-id")
    (listed,) = api_json(http.get(f"{API}/webhooks", headers=owner.headers), 200)["items"]
    assert listed["id"] == webhook_id
    assert "secret" not in listed

    # a test event, queued for this endpoint and shown in its delivery log
    row.get_by_role("button", name=f"Send a test event to {HOOK}").click()
    expect(page.get_by_text(re.compile(r"Test event queued \(delivery \d+\)\."))).to_be_visible()
    row.get_by_role("link", name="Delivery log").click()
    expect(page).to_have_url(re.compile(rf"/webhooks/{webhook_id}$"))
    expect(page.get_by_role("heading", name=HOOK)).to_be_visible()
    log = page.locator("[data-region=deliveries] tr[data-delivery-id]")
    expect(log).to_have_count(1)
    expect(log.first).to_contain_text("webhook.test")
    expect(log.first).to_contain_text("Pending")
    # another one from this page: the log follows without a reload
    page.get_by_role("button", name="Send test event").click()
    expect(log).to_have_count(2)
    page.reload()
    assert secret not in page.content()

    # disabled after a confirmation: a notice says why; the queue stays
    page.get_by_role("button", name="Disable").click()
    expect(page.locator("#confirm-dialog")).to_contain_text(f"Disable “{HOOK}”?")
    page.locator("#confirm-ok").click()
    notice = page.locator("[data-disabled-notice]")
    expect(notice).to_contain_text("disabled by a user")
    expect(page.get_by_role("button", name="Send test event")).to_have_count(0)
    expect(log).to_have_count(2)
    page.goto("/webhooks")
    notice = page.locator("[data-disabled-notice]")
    expect(notice).to_contain_text(f"{HOOK} is disabled")
    expect(notice).to_contain_text("disabled by a user")
    row = page.locator("tr[data-webhook-id]").filter(has_text=HOOK)
    expect(row).to_contain_text("Disabled")

    # enabled again from the notice
    notice.get_by_role("button", name=f"Enable {HOOK} again").click()
    expect(page.get_by_text(f"“{HOOK}” enabled again")).to_be_visible()
    expect(page.locator("[data-disabled-notice]")).to_have_count(0)
    expect(row).to_contain_text("Enabled")
    shown_api = api_json(http.get(f"{API}/webhooks/{webhook_id}", headers=owner.headers), 200)
    assert shown_api["enabled"] is True
    assert shown_api["disabled_reason"] is None
    pending = api_json(
        http.get(
            f"{API}/webhooks/{webhook_id}/deliveries",
            params={"state": "pending"},
            headers=owner.headers,
        ),
        200,
    )["items"]
    assert [d["event_type"] for d in pending] == ["webhook.test", "webhook.test"]

    # deleted after a confirmation
    row.get_by_role("button", name=f"Delete {HOOK}").click()
    page.locator("#confirm-ok").click()
    expect(page.get_by_role("heading", name="No endpoints yet")).to_be_visible()
    assert seen.errors_except_expected_statuses(422) == []  # the unknown event type


def test_a_viewer_has_no_webhooks_link_and_is_refused_the_page(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    owner, viewer = register(http, "Olaf Owner"), register(http, "Vera Viewer")
    team = create_org(http, owner, "Hookless")
    join(http, owner, team, viewer, "viewer")
    sign_in(page.context, live, viewer)
    page.goto("/devices")
    expect(page.get_by_role("link", name="Webhooks")).to_be_visible()  # their own org
    _switch(page, team)
    expect(page.get_by_role("link", name="Webhooks")).to_have_count(0)
    refused = page.goto("/webhooks")
    assert refused is not None
    assert refused.status == 403
    expect(page.get_by_role("alert")).to_contain_text("webhooks")
    expect(page.locator("#webhook-form")).to_have_count(0)
    assert seen.errors_except_expected_statuses(403) == []
