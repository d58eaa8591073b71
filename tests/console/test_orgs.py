"""Organisations in the console (Chromium): the switcher, the Members page, invitations
accepted through their link, and a role's missing buttons."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.support.console import (
    API,
    Account,
    Live,
    Watch,
    acting,
    api_json,
    create_device,
    create_org,
    join,
    register,
    sign_in,
    user_id,
)

MODEL = b"\x00nef" * 1024


def _team_device(http: httpx.Client, owner: Account, org_id: str, name: str) -> dict[str, Any]:
    created = http.post(
        f"{API}/devices",
        json={"name": name, "serial_number": f"SN-{name}", "device_type": "kl520"},
        headers=acting(owner, org_id),
    )
    return api_json(created, 201)


def _switch(page: Page, org_id: str) -> None:
    with page.expect_navigation():
        page.get_by_label("Organisation").select_option(org_id)
    expect(page.get_by_label("Organisation")).to_have_value(org_id)


def test_an_owner_invites_a_colleague_who_joins_through_the_link(
    page: Page, seen: Watch, http: httpx.Client, live: Live, browser: Browser
) -> None:
    owner, colleague = register(http, "Olive Owner"), register(http, "Colin Colleague")
    team = create_org(http, owner, "Lab team")
    sign_in(page.context, live, owner)
    page.goto("/members")
    _switch(page, team)
    expect(page).to_have_url(re.compile(r"/members$"))
    expect(page.locator("[data-my-role]")).to_have_text("owner")

    page.get_by_label("Email").fill(colleague.email)
    page.get_by_label("Role", exact=True).select_option("operator")
    page.get_by_role("button", name="Invite").click()
    link_box = page.locator("[data-invite-link]")
    expect(link_box).to_be_visible()
    link = page.locator("[data-invite-url]").inner_text()
    assert re.fullmatch(rf"{re.escape(live.url)}/invitations/accept\?token=vin_\S+", link), link
    pending = page.locator("tr[data-invitation-id]")
    expect(pending).to_contain_text(colleague.email)

    # someone else opening the link is told, in words, whose it is
    with browser.new_context(base_url=live.url) as other:
        stranger = other.new_page()
        sign_in(other, live, register(http, "Sam Stranger"))
        stranger.goto(link)
        expect(stranger.get_by_role("alert")).to_contain_text(f"for {colleague.email}")
        expect(stranger.get_by_role("button", name=re.compile("^Join"))).to_have_count(0)

    with browser.new_context(base_url=live.url) as theirs:
        them = theirs.new_page()
        sign_in(theirs, live, colleague)
        them.goto(link)
        expect(them.get_by_text("You are invited to join Lab team as operator")).to_be_visible()
        them.get_by_role("button", name="Join Lab team").click()
        expect(them).to_have_url(re.compile(r"/members$"))
        expect(them.get_by_label("Organisation")).to_have_value(team)
        expect(them.locator("[data-my-role]")).to_have_text("operator")
        # an operator sees the members, read only
        expect(them.get_by_role("button", name="Invite")).to_have_count(0)
        expect(them.locator("select[data-role-select]")).to_have_count(0)
        # the link is used up
        them.goto(link)
        expect(them.get_by_role("alert")).to_contain_text("no longer valid")

    page.reload()
    row = page.locator("tr[data-member-id]").filter(has_text=colleague.email)
    expect(row.get_by_label(f"Role of {colleague.email}")).to_have_value("operator")
    expect(page.locator("tr[data-invitation-id]")).to_have_count(0)

    # the owner makes the colleague a viewer, then the last owner cannot step down
    row.get_by_label(f"Role of {colleague.email}").select_option("viewer")
    expect(page.get_by_text(f"{colleague.email} is now viewer.")).to_be_visible()
    members = api_json(http.get(f"{API}/orgs/{team}/members", headers=owner.headers), 200)
    roles = {m["email"]: m["role"] for m in members["items"]}
    assert roles[colleague.email] == "viewer"
    mine = page.locator("tr[data-member-id]").filter(has_text=owner.email)
    mine.get_by_label(f"Role of {owner.email}").select_option("admin")
    expect(page.locator("[data-members-error]")).to_contain_text("last owner")
    expect(mine.get_by_label(f"Role of {owner.email}")).to_have_value("owner")

    # and removes them
    row.get_by_role("button", name=f"Remove {colleague.email}").click()
    page.locator("#confirm-ok").click()
    expect(page.locator("tr[data-member-id]").filter(has_text=colleague.email)).to_have_count(0)
    assert seen.errors_except_expected_statuses(409) == []


def test_switching_organisations_shows_each_organisations_devices(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    me, owner = register(http, "Mia Member"), register(http, "Tom Teamowner")
    create_device(http, me, "My own dongle", "MINE-1")
    team = create_org(http, owner, "Warehouse team")
    _team_device(http, owner, team, "Warehouse dongle")
    join(http, owner, team, me, "operator")
    sign_in(page.context, live, me)

    page.goto("/devices")
    expect(page.get_by_role("link", name="My own dongle")).to_be_visible()
    expect(page.get_by_role("link", name="Warehouse dongle")).to_have_count(0)
    personal = page.get_by_label("Organisation").input_value()

    _switch(page, team)
    expect(page).to_have_url(re.compile(r"/devices$"))
    expect(page.get_by_role("link", name="Warehouse dongle")).to_be_visible()
    expect(page.get_by_role("link", name="My own dongle")).to_have_count(0)
    # the choice holds on every page, and the page's scripts act in it too
    page.get_by_role("link", name="Warehouse dongle").click()
    page.get_by_label("Name", exact=True).fill("Warehouse dongle 2")
    page.get_by_role("button", name="Rename").click()
    expect(page.get_by_text("Renamed to Warehouse dongle 2.")).to_be_visible()
    # switching from a device's page goes to the other organisation's device list
    _switch(page, personal)
    expect(page).to_have_url(re.compile(r"/devices$"))
    expect(page.get_by_role("link", name="My own dongle")).to_be_visible()

    _switch(page, team)
    expect(page.get_by_role("link", name="Warehouse dongle 2")).to_be_visible()
    # removed from the team: the stale choice falls back to the personal organisation
    removed = http.delete(f"{API}/orgs/{team}/members/{user_id(http, me)}", headers=owner.headers)
    assert removed.status_code == 204, removed.text
    page.goto("/devices")
    expect(page.get_by_role("link", name="My own dongle")).to_be_visible()
    expect(page.get_by_label("Organisation")).to_have_value(personal)
    expect(page.get_by_label("Organisation").locator("option")).to_have_count(1)
    assert seen.errors == []


def test_a_viewer_sees_no_deploy_form_and_the_server_still_refuses(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    viewer, owner = register(http, "Vera Viewer"), register(http, "Otto Owner")
    team = create_org(http, owner, "Read-only team")
    device = _team_device(http, owner, team, "Watched dongle")
    api_json(
        http.post(
            f"{API}/models",
            data={"target_chip": "kl520", "name": "team-model"},
            files={"file": ("team-model.nef", MODEL, "application/octet-stream")},
            headers=acting(owner, team),
        ),
        201,
    )
    join(http, owner, team, viewer, "viewer")
    sign_in(page.context, live, viewer)
    page.goto("/devices")
    _switch(page, team)
    expect(page.get_by_role("button", name="Connect a device")).to_have_count(0)
    expect(page.get_by_role("button", name="Unpair")).to_have_count(0)

    page.get_by_role("link", name="Watched dongle").click()
    expect(page.get_by_role("heading", name="Deploy a model")).to_be_visible()
    expect(page.locator("#deploy-form")).to_have_count(0)
    expect(page.locator("[data-role-note]")).to_contain_text("viewer")
    expect(page.get_by_role("button", name="Unpair")).to_have_count(0)
    expect(page.get_by_role("button", name="Rename")).to_have_count(0)

    page.goto("/models")
    expect(page.get_by_role("cell", name="team-model", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Upload")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("^Delete"))).to_have_count(0)

    page.goto("/members")
    expect(page.get_by_role("button", name="Invite")).to_have_count(0)
    expect(page.locator("tr[data-member-id]")).to_have_count(2)

    # posted anyway (the browser's cookie, same origin): 403 naming the permission
    models = api_json(http.get(f"{API}/models", headers=acting(owner, team)), 200)["items"]
    posted = page.request.post(
        f"{API}/devices/{device['id']}/deployments",
        data={"model_id": models[0]["id"]},
        headers={"Origin": live.url, "X-Visiona-Org": team},
    )
    assert posted.status == 403
    assert posted.json()["error"]["code"] == "forbidden"
    assert "deploy" in posted.json()["error"]["message"]
    assert seen.errors == []


def test_the_switcher_refuses_other_origins_and_foreign_organisations(
    http: httpx.Client, live: Live
) -> None:
    me, stranger = register(http), register(http)
    theirs = create_org(http, stranger, "Not mine")
    cookies = {"Cookie": f"{live.settings.cookie_name}={me.token}"}
    no_origin = http.post("/org", data={"org_id": theirs}, headers=cookies)
    assert no_origin.status_code == 403
    assert no_origin.json()["error"]["code"] == "csrf_failed"
    foreign = http.post("/org", data={"org_id": theirs}, headers={**cookies, "Origin": live.url})
    assert foreign.status_code == 404
    assert "visiona_org" not in foreign.headers.get("set-cookie", "")
    mine = create_org(http, me, "Mine")
    chosen = http.post(
        "/org",
        data={"org_id": mine, "next": "/devices/123?x=1"},
        headers={**cookies, "Origin": live.url},
    )
    assert chosen.status_code == 303
    assert chosen.headers["location"] == "/devices"
    assert f"visiona_org={mine}" in chosen.headers["set-cookie"]
    assert "HttpOnly" in chosen.headers["set-cookie"]


def test_a_malformed_org_cookie_acts_in_the_personal_organisation(
    http: httpx.Client, live: Live
) -> None:
    me = register(http)
    create_device(http, me, "Personal dongle", "PD-1")
    cookie = f"{live.settings.cookie_name}={me.token}; visiona_org=not-a-uuid"
    shown = http.get("/devices", headers={"Cookie": cookie})
    assert shown.status_code == 200
    assert "Personal dongle" in shown.text


def test_the_download_link_serves_the_chosen_organisations_model_to_roles_allowed(
    http: httpx.Client, live: Live
) -> None:
    owner, operator, viewer = register(http), register(http), register(http)
    team = create_org(http, owner, "Downloads")
    model = api_json(
        http.post(
            f"{API}/models",
            data={"target_chip": "kl520", "name": "shared"},
            files={"file": ("shared.nef", MODEL, "application/octet-stream")},
            headers=acting(owner, team),
        ),
        201,
    )
    join(http, owner, team, operator, "operator")
    join(http, owner, team, viewer, "viewer")

    def fetch(account: Account) -> httpx.Response:
        cookie = f"{live.settings.cookie_name}={account.token}; visiona_org={team}"
        return http.get(f"/models/{model['id']}/file", headers={"Cookie": cookie})

    got = fetch(operator)
    assert got.status_code == 200
    assert got.content == MODEL
    assert 'filename="shared.nef"' in got.headers["content-disposition"]
    refused = fetch(viewer)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"


def test_a_signed_out_invitee_signs_in_first_and_comes_back_to_the_link(
    http: httpx.Client,
) -> None:
    opened = http.get("/invitations/accept?token=vin_x")
    assert opened.status_code == 303
    assert opened.headers["location"] == "/sign-in?next=%2Finvitations%2Faccept%3Ftoken%3Dvin_x"


def test_an_invitation_for_a_member_already_says_so(http: httpx.Client, live: Live) -> None:
    owner, member = register(http), register(http)
    team = create_org(http, owner, "Twice invited")
    join(http, owner, team, member, "viewer")
    again = api_json(
        http.post(
            f"{API}/orgs/{team}/invitations",
            json={"email": member.email, "role": "operator"},
            headers=owner.headers,
        ),
        201,
    )
    cookie = f"{live.settings.cookie_name}={member.token}"
    shown = http.get(f"/invitations/accept?token={again['token']}", headers={"Cookie": cookie})
    assert shown.status_code == 200
    assert "You are already a member of <strong>Twice invited</strong>" in shown.text
    assert "Join" not in shown.text
