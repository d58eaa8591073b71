"""The devices pages in Chromium: connect a real agent, live status, filter, deploy, unpair."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
from playwright.sync_api import Locator, Page, expect

from tests.support.console import (
    Live,
    Watch,
    create_device,
    pair_device,
    register,
    sign_in,
    start_agent,
    stop_agent,
    upload_model,
)
from tests.support.tunnel import connect_agent
from visiona.tunnel import conflict

MODEL = bytes(range(256)) * 8192  # 2 MiB


def _row(page: Page, name: str) -> Locator:
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))


def test_empty_state_explains_and_offers_to_connect_a_device(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    sign_in(page.context, live, register(http))
    page.goto("/")
    expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    expect(page.get_by_text("A device is a Kneron USB dongle")).to_be_visible()
    expect(page.get_by_role("button", name="Connect a device")).to_have_count(1)
    expect(page.get_by_role("table")).to_be_hidden()
    assert seen.errors == []


def test_connect_a_real_agent_watch_it_come_online_deploy_rename_filter_and_unpair(
    page: Page, seen: Watch, http: httpx.Client, live: Live, workdir: Path
) -> None:
    account = register(http)
    upload_model(http, account, "people-detector", MODEL)
    upload_model(http, account, "other-chip", MODEL, chip="kl720")
    create_device(http, account, "Spare dongle", "SPARE-1")
    sign_in(page.context, live, account)
    page.goto("/devices")
    page.evaluate("window.__sameDocument = true")
    expect(_row(page, "Spare dongle").get_by_text("Never connected")).to_be_visible()

    # the connect dialog: a one-time token, its countdown and the command to copy
    page.get_by_role("button", name="Connect a device").click()
    dialog = page.get_by_role("dialog", name="Connect a device")
    expect(dialog).to_be_visible()
    command = dialog.locator("code")
    expect(command).to_contain_text("--token vpt_")
    # no port is proposed: 8080 is this server's own default, not the device's service
    port_field = dialog.get_by_label("Local port of the device's service")
    expect(port_field).to_have_value("")
    assert ":8080" not in command.inner_text()
    dialog.get_by_role("button", name="Copy command").click()
    expect(
        dialog.get_by_text("Enter the local port of the device's service first.")
    ).to_be_visible()
    port_field.fill(str(live.device_port))
    text = command.inner_text()
    assert re.fullmatch(
        rf"visiona agent --server {re.escape(live.url)} --token vpt_\S+ "
        rf"--forward 127\.0\.0\.1:{live.device_port}",
        text,
    ), text
    expect(dialog.get_by_text(re.compile(r"Expires in 1[45]:\d\d"))).to_be_visible()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    dialog.get_by_role("button", name="Copy command").click()
    expect(dialog.get_by_text("Copied.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == text

    name = f"Lab dongle {uuid.uuid4().hex[:4]}"
    agent = start_agent(text, workdir, name, f"SN-{uuid.uuid4().hex[:8]}")
    try:
        expect(dialog.get_by_role("status").filter(has_text="Paired")).to_contain_text(
            name, timeout=30_000
        )
        expect(dialog.get_by_text("Used", exact=True)).to_be_visible()
        expect(dialog).not_to_contain_text("Expires in Used")
        dialog.get_by_role("button", name="Close").click()
        expect(_row(page, name).get_by_text("Online", exact=True)).to_be_visible(timeout=20_000)
        # all of it without a reload
        assert page.evaluate("window.__sameDocument") is True
        last_seen = _row(page, name).locator("time")
        expect(last_seen).to_have_text(re.compile(r"just now|seconds? ago"))
        expect(last_seen).to_have_attribute(
            "title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
        )

        # filter and search, kept in the URL
        page.get_by_label("Status").select_option("online")
        expect(page).to_have_url(re.compile(r"status=online"))
        expect(_row(page, name)).to_be_visible()
        expect(_row(page, "Spare dongle")).to_have_count(0)
        page.get_by_label("Status").select_option("offline")
        expect(page).to_have_url(re.compile(r"status=offline"))
        expect(_row(page, "Spare dongle")).to_be_visible()
        expect(_row(page, name)).to_have_count(0)
        page.get_by_label("Status").select_option("all")
        page.get_by_label("Search by name or serial").fill("spare-1")
        page.get_by_role("button", name="Search").click()
        expect(page).to_have_url(re.compile(r"q=spare-1"))
        expect(_row(page, "Spare dongle")).to_be_visible()
        expect(_row(page, name)).to_have_count(0)
        page.reload()
        expect(page.get_by_label("Search by name or serial")).to_have_value("spare-1")
        expect(_row(page, name)).to_have_count(0)
        page.goto("/devices")

        # the device page: statuses, deploy (only matching models), rename
        _row(page, name).get_by_role("link").click()
        expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
        expect(page.get_by_text("Online", exact=True)).to_be_visible()
        options = page.get_by_label("Model").locator("option").all_inner_texts()
        assert [o.split(" (")[0] for o in options] == ["people-detector"]
        page.get_by_role("button", name="Deploy").click()
        deployments = page.locator('[data-region="deployments"]')
        # this agent has no deploy hook: the model is stored on the PC, not "succeeded"
        expect(page.get_by_text("no deploy hook is configured there")).to_be_visible(timeout=30_000)
        deployed = deployments.get_by_role("row").filter(has_text="people-detector")
        expect(deployed).to_contain_text("Stored (no hook)", timeout=30_000)
        expect(deployed).to_contain_text("on the PC; no deploy hook configured")
        expect(deployed).not_to_contain_text("Succeeded")
        stored = list((workdir / "models").rglob("*"))
        assert any(p.is_file() and p.stat().st_size == len(MODEL) for p in stored), stored

        renamed = f"{name} (bench)"
        page.get_by_label("Name").fill(renamed)
        page.get_by_role("button", name="Rename").click()
        expect(page.get_by_role("heading", name=renamed, level=1)).to_be_visible()
        page.reload()
        expect(page.get_by_role("heading", name=renamed, level=1)).to_be_visible()

        # unpair: a confirmation naming the device, then the agent is cut off (exit 3)
        page.get_by_role("button", name="Unpair").click()
        confirm = page.get_by_role("dialog")
        expect(confirm).to_contain_text(f"Unpair “{renamed}”?")
        confirm.get_by_role("button", name="Cancel").click()
        expect(confirm).to_be_hidden()
        assert agent.poll() is None
        page.get_by_role("button", name="Unpair").click()
        page.get_by_role("dialog").get_by_role("button", name="Unpair").click()
        expect(page).to_have_url(re.compile(r"/devices$"))
        expect(_row(page, renamed)).to_have_count(0)
        assert agent.wait(30) == 3
    finally:
        print("agent stderr:", stop_agent(agent))  # noqa: T201 - shown when the test fails
    assert seen.errors == []


def test_bulk_unpair_asks_first_and_removes_only_the_selection(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    for index in range(3):
        create_device(http, account, f"Bulk {index}", f"BULK-{index}")
    sign_in(page.context, live, account)
    page.goto("/devices")
    unpair = page.get_by_role("button", name="Unpair")
    expect(unpair).to_be_disabled()
    page.get_by_label("Select Bulk 0").check()
    page.get_by_label("Select Bulk 2").check()
    expect(unpair).to_be_enabled()
    unpair.click()
    confirm = page.get_by_role("dialog")
    expect(confirm).to_contain_text("Unpair 2 devices?")
    expect(confirm).to_contain_text("Bulk 0, Bulk 2")
    confirm.get_by_role("button", name="Cancel").click()
    expect(_row(page, "Bulk 0")).to_be_visible()

    unpair.click()
    page.get_by_role("dialog").get_by_role("button", name="Unpair").click()
    expect(_row(page, "Bulk 0")).to_have_count(0)
    expect(_row(page, "Bulk 2")).to_have_count(0)
    expect(_row(page, "Bulk 1")).to_be_visible()
    assert [
        d["name"] for d in http.get("/api/v1/devices", headers=account.headers).json()["items"]
    ] == ["Bulk 1"]
    assert seen.errors == []


def test_revoke_a_session_token_from_the_device_page(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    paired = pair_device(http, account, "Token holder")
    sign_in(page.context, live, account)
    page.goto(f"/devices/{paired['device_id']}")
    tokens = page.locator('[data-region="session-tokens"]')
    expect(tokens.get_by_text("Active")).to_be_visible()
    tokens.get_by_role("button", name="Revoke").click()
    expect(tokens.get_by_text("Revoked")).to_be_visible()
    expect(tokens.get_by_role("button", name="Revoke")).to_have_count(0)
    refused = http.post(
        "/api/v1/agent/status",
        json={"usb_status": "online"},
        headers={"Authorization": f"Bearer {paired['session_token']}"},
    )
    assert refused.status_code == 401
    assert seen.errors == []


def test_a_device_of_another_user_is_not_found(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    other = create_device(http, register(http), "Secret lab 7", "OTHER-1")
    sign_in(page.context, live, register(http))
    response = page.goto(f"/devices/{other['id']}")
    assert response is not None
    assert response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.get_by_text("Secret lab 7")).to_have_count(0)
    assert seen.errors_except_expected_statuses(404) == []


def test_deploying_to_a_device_that_is_not_connected_says_so_inline(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    paired = pair_device(http, account, "Unplugged")
    upload_model(http, account, "Detector", b"d" * 1000)
    sign_in(page.context, live, account)
    page.goto(f"/devices/{paired['device_id']}")
    page.get_by_role("button", name="Deploy").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("not connected"))
    row = page.locator('[data-region="deployments"]').get_by_role("row").filter(has_text="Detector")
    expect(row).to_contain_text("Failed")
    expect(row).to_contain_text("the device is not connected")
    assert seen.errors_except_expected_statuses(502) == []


def test_the_pairing_token_expires_in_the_dialog_and_a_new_one_can_be_made(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    sign_in(page.context, live, register(http))
    page.clock.install()
    page.goto("/devices")
    page.get_by_role("button", name="Connect a device").click()
    dialog = page.get_by_role("dialog", name="Connect a device")
    first = dialog.locator("code")
    expect(first).to_contain_text("--token vpt_")
    token = first.inner_text()
    page.clock.fast_forward("16:00")
    expect(dialog.get_by_text("This token has expired")).to_be_visible()
    expect(dialog.get_by_text("Expires in 0:00")).to_be_visible()
    dialog.get_by_role("button", name="New token").click()
    expect(dialog.get_by_text("Waiting for the agent to pair")).to_be_visible()
    expect(first).to_contain_text("--token vpt_")
    assert first.inner_text() != token
    assert seen.errors == []


async def _flap(ws_url: str, token: str, times: int) -> None:
    """Agents with one device's credentials, each knocking the previous one off (4409)."""
    server = cast("Any", SimpleNamespace(ws_url=ws_url))
    async with contextlib.AsyncExitStack() as stack:
        agents = []
        for _ in range(times):
            agents.append(await stack.enter_async_context(connect_agent(server, token)))
            if len(agents) > 1:
                await asyncio.wait_for(agents[-2].closed.wait(), 10)


def test_a_tunnel_conflict_is_shown_on_the_device_page_with_cause_and_fix(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    device = pair_device(http, account, "Shared dongle")
    ws_url = live.url.replace("http://", "ws://") + "/api/v1/agent/tunnel"
    # Playwright's sync API holds this thread's event loop: the agents get their own
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _flap(ws_url, device["session_token"], 6)).result(timeout=120)
    # tunnel events are written in batches: the page is rendered once they are
    events = f"/api/v1/devices/{device['device_id']}/audit-events"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        items = http.get(events, headers=account.headers).json()["items"]
        if any(item["action"] == "tunnel.conflict" for item in items):
            break
        time.sleep(0.05)
    sign_in(page.context, live, account)
    page.goto(f"/devices/{device['device_id']}")
    notice = page.locator("[data-tunnel-conflict]")
    expect(notice).to_contain_text("Tunnel conflict")
    expect(notice).to_contain_text(conflict.CAUSE)
    expect(notice).to_contain_text(conflict.FIX)
    history = page.locator("[data-region=history]")
    expect(history.locator("tr[data-action='tunnel.conflict']")).to_have_count(1)
    assert seen.errors == []
