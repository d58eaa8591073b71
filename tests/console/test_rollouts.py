"""The Rollouts page in Chromium: a rollout created from the form, its batches and devices
polled live, paused, resumed and cancelled from its buttons; a viewer sees none of them."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from tests.support.console import (
    API,
    Live,
    Watch,
    acting,
    api_json,
    create_device,
    create_org,
    join,
    register,
    sign_in,
    upload_model,
)

MODEL = b"\x00nef" * 1024
#: The scheduler's turns come every second; a batch or a state shows within a few polls.
LIVE = 20_000


def test_an_operator_rolls_a_model_out_pauses_resumes_and_cancels_it_from_the_page(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    me = register(http, "Rita Rollout")
    upload_model(http, me, "Face finder", MODEL)
    names = ["Dock 1", "Dock 2", "Dock 3"]
    for number, name in enumerate(names):
        create_device(http, me, name, f"DOCK-{number}")
    sign_in(page.context, live, me)

    page.goto("/rollouts")
    expect(page.get_by_role("link", name="Rollouts")).to_have_attribute("aria-current", "page")
    expect(page.get_by_text("No rollouts yet.")).to_be_visible()
    form = page.locator("#rollout-form")
    form.get_by_label("Model").select_option(label="Face finder (KL520)")

    # a selector that does not parse is refused in words, nothing is created
    form.get_by_label("Tag selector", exact=True).fill("chip in (")
    form.get_by_role("button", name="Start rollout").click()
    expect(form.get_by_role("alert")).to_contain_text(re.compile(r"\S"))
    assert api_json(http.get(f"{API}/rollouts", headers=me.headers), 200)["items"] == []

    form.get_by_label("Devices I choose").check()
    expect(form.get_by_label("Tag selector", exact=True)).to_be_hidden()
    for name in names:
        form.get_by_label(name).check()
    form.get_by_label("Canary devices").fill("1")
    form.get_by_label("Batch size").fill("1")
    form.get_by_label("Max failures (%)").fill("100")  # offline devices do not hold a batch
    form.get_by_role("button", name="Start rollout").click()
    expect(page).to_have_url(re.compile(r"/rollouts/[0-9a-f-]{36}$"))
    rollout_id = page.url.rsplit("/", 1)[1]
    created = api_json(http.get(f"{API}/rollouts/{rollout_id}", headers=me.headers), 200)
    assert (created["canary"], created["batch"], created["devices"]) == (1, "1", 3)

    # the batches start one after the other and the page follows without a reload
    batches = page.locator("table.batches tr[data-batch]")
    expect(batches).to_have_count(3, timeout=LIVE)
    expect(batches.first).to_contain_text("Canary")
    expect(batches.nth(2)).to_contain_text("Batch 2")
    rows = page.locator("table.rollout-devices tr[data-device-id]")
    expect(rows.filter(has_text="Waiting")).to_have_count(3, timeout=LIVE)  # never connected
    for name in names:
        expect(rows.filter(has_text=name)).to_have_count(1)
    expect(page.locator("[data-rollout-summary]")).to_contain_text("0 of 3 devices done")

    page.get_by_role("button", name="Pause").click()
    expect(page.locator("[data-rollout-state]")).to_have_text("Paused")
    expect(page.locator("[data-rollout-reason]")).to_have_text("paused by a user")
    assert (
        api_json(http.get(f"{API}/rollouts/{rollout_id}", headers=me.headers), 200)["state"]
        == "paused"
    )
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("[data-rollout-state]")).to_have_text("Running")
    expect(page.get_by_role("button", name="Pause")).to_be_visible()

    page.get_by_role("button", name="Cancel rollout").click()
    page.locator("#confirm-ok").click()
    expect(page.locator("[data-rollout-state]")).to_have_text("Cancelled")
    expect(rows.filter(has_text="Cancelled")).to_have_count(3, timeout=LIVE)
    expect(page.get_by_role("button", name="Roll back")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)

    # the state filter is kept in the URL
    page.get_by_label("State").select_option("waiting")
    expect(page).to_have_url(re.compile(r"\?state=waiting$"))
    expect(rows).to_have_count(0)
    expect(page.get_by_text("No device is waiting.")).to_be_visible()
    page.get_by_label("State").select_option("cancelled")
    expect(page).to_have_url(re.compile(r"\?state=cancelled$"))
    expect(rows).to_have_count(3)
    page.reload()
    expect(page.get_by_label("State")).to_have_value("cancelled")

    # a finished rollout rolls back: a new rollout, linked to this one
    page.get_by_role("button", name="Roll back").click()
    page.locator("#confirm-ok").click()
    expect(page).not_to_have_url(re.compile(rf"/rollouts/{rollout_id}"))
    expect(page.get_by_role("heading", name="Rollback to the previous models")).to_be_visible()
    expect(page.locator("dl.details").get_by_role("link", name=rollout_id[:8])).to_have_attribute(
        "href", f"/rollouts/{rollout_id}"
    )
    rollback_id = page.url.rsplit("/", 1)[1]
    assert (
        api_json(http.get(f"{API}/rollouts/{rollback_id}", headers=me.headers), 200)["rollback_of"]
        == rollout_id
    )

    page.goto("/rollouts")
    listed = page.locator(f'tr[data-rollout-id="{rollout_id}"]')
    expect(listed).to_contain_text("Face finder")
    expect(listed).to_contain_text("3 devices")
    expect(listed).to_contain_text("Cancelled")
    expect(listed).to_contain_text("cancelled by a user")
    expect(listed.locator("[data-progress]")).to_have_text("0/3 done")
    expect(page.locator(f'tr[data-rollout-id="{rollback_id}"]')).to_contain_text("Rollback")
    assert seen.errors_except_expected_statuses(400) == []


def test_a_viewer_sees_a_rollout_without_any_button_and_the_server_refuses_them(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    owner, viewer = register(http, "Owen Owner"), register(http, "Vera Viewer")
    team = create_org(http, owner, "Rollout team")
    model = api_json(
        http.post(
            f"{API}/models",
            data={"target_chip": "kl520", "name": "Team model"},
            files={"file": ("team.nef", MODEL, "application/octet-stream")},
            headers=acting(owner, team),
        ),
        201,
    )
    device = api_json(
        http.post(
            f"{API}/devices",
            json={"name": "Team dongle", "serial_number": "TEAM-1", "device_type": "kl520"},
            headers=acting(owner, team),
        ),
        201,
    )
    rollout = api_json(
        http.post(
            f"{API}/rollouts",
            json={"model_id": model["id"], "device_ids": [device["id"]]},
            headers=acting(owner, team),
        ),
        201,
    )
    join(http, owner, team, viewer, "viewer")
    sign_in(page.context, live, viewer)
    page.context.add_cookies([{"name": "visiona_org", "value": team, "url": live.url}])

    page.goto("/rollouts")
    expect(page.get_by_label("Organisation")).to_have_value(team)
    expect(page.locator("[data-role-note]")).to_contain_text("viewer")
    expect(page.locator("#rollout-form")).to_have_count(0)
    expect(page.locator(f'tr[data-rollout-id="{rollout["id"]}"]')).to_contain_text("Team model")

    page.goto(f"/rollouts/{rollout['id']}")
    expect(page.locator("[data-rollout-state]")).to_have_text(re.compile("Running|Completed"))
    expect(page.locator("tr[data-device-id]")).to_contain_text("Team dongle")
    expect(page.locator("[data-rollout-actions]")).to_have_count(0)
    for name in ("Pause", "Resume", "Cancel rollout", "Roll back"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    # the poll keeps them hidden too
    page.wait_for_timeout(3500)
    expect(page.locator("[data-rollout-actions]")).to_have_count(0)

    refused = http.post(f"{API}/rollouts/{rollout['id']}/pause", headers=acting(viewer, team))
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "forbidden"
    # acting in their personal organisation, the team's rollout is no page at all
    page.context.add_cookies([{"name": "visiona_org", "value": "stale", "url": live.url}])
    page.goto(f"/rollouts/{rollout['id']}")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert seen.errors_except_expected_statuses(404) == []


def test_a_selector_rollout_with_a_deadline_reaches_the_tagged_devices_only(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    me = register(http, "Sel Ector")
    upload_model(http, me, "Dock model", MODEL)
    for name, tags in (("Pier A", {"site": "dock"}), ("Pier B", {"site": "dock"}), ("Office", {})):
        device = create_device(http, me, name, f"SN-{name.replace(' ', '')}")
        tagged = http.put(
            f"{API}/devices/{device['id']}/tags", json={"tags": tags}, headers=me.headers
        )
        api_json(tagged, 200)
    sign_in(page.context, live, me)

    page.goto("/rollouts")
    form = page.locator("#rollout-form")
    form.get_by_label("Tag selector", exact=True).fill("site=dock")
    form.get_by_label("Deadline (optional)").fill("2099-01-01T12:00")
    form.get_by_role("button", name="Start rollout").click()
    expect(page).to_have_url(re.compile(r"/rollouts/[0-9a-f-]{36}$"))
    expect(page.get_by_role("heading", name="Rollout of Dock model")).to_be_visible()
    expect(page.locator("dl.details code")).to_have_text("site=dock")
    rows = page.locator("table.rollout-devices tr[data-device-id]")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="Office")).to_have_count(0)
    rollout_id = page.url.rsplit("/", 1)[1]
    found = api_json(http.get(f"{API}/rollouts/{rollout_id}", headers=me.headers), 200)
    assert (found["selector"], found["deadline"][:4]) == ("site=dock", "2099")

    page.goto("/rollouts")
    expect(page.locator(f'tr[data-rollout-id="{rollout_id}"] code')).to_have_text("site=dock")
    assert seen.errors == []
