"""Sign-up, sign-in, the redirect of signed-out visitors and sign-out, in Chromium."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from tests.support.console import API, PASSWORD, Live, Watch, register, unique_email


def test_signed_out_visitor_is_sent_to_sign_in_and_back_after_it(
    page: Page, seen: Watch, http: httpx.Client
) -> None:
    account = register(http)
    page.goto("/models?chip=kl520")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=%2Fmodels%3Fchip%3Dkl520$"))
    page.get_by_label("Email").fill(account.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/models\?chip=kl520$"))
    assert seen.errors == []


def test_root_redirects_to_sign_in_then_to_devices(page: Page, seen: Watch) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/sign-in"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_role("link", name="Create account").click()
    name = "Grace Hopper"
    email = unique_email()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    # signed in straight away, on the landing page
    expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/devices$"))
    page.get_by_role("link", name="Account").click()
    account = page.get_by_role("main")  # the organisation menu names the user too
    expect(account.get_by_text(email)).to_be_visible()
    expect(account.get_by_text(name)).to_be_visible()
    assert seen.errors == []


def test_sign_up_errors_are_inline_and_keep_the_typed_email(
    page: Page, seen: Watch, http: httpx.Client
) -> None:
    taken = register(http)
    page.goto("/sign-up")
    page.get_by_label("Name").fill("Someone")
    page.get_by_label("Email").fill(taken.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("already exists"))
    expect(page.get_by_label("Email")).to_have_value(taken.email)

    fresh = unique_email()
    page.get_by_label("Email").fill(fresh)
    page.get_by_label("Password").fill("short")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("alert")).to_have_text("Password must be at least 8 characters long.")
    expect(page.get_by_label("Email")).to_have_value(fresh)
    expect(page).to_have_url(re.compile(r"/sign-up"))
    # two bad fields: one readable sentence each, one per line (no raw pydantic text)
    page.get_by_label("Email").evaluate("el => { el.type = 'text'; }")  # past the browser's check
    page.get_by_label("Email").fill("not-an-email")
    page.get_by_role("button", name="Create account").click()
    alert = page.get_by_role("alert")
    expect(alert).to_have_text(
        "Email is not a valid email address.\nPassword must be at least 8 characters long."
    )
    assert "Value error" not in alert.inner_text()
    # the only console errors are Chrome's notes about the refused requests
    assert seen.errors_except_expected_statuses(409, 422) == []


def test_wrong_password_is_an_inline_message_and_keeps_the_email(
    page: Page, seen: Watch, http: httpx.Client
) -> None:
    account = register(http)
    page.goto("/sign-in")
    page.get_by_label("Email").fill(account.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    expect(page.get_by_label("Email")).to_have_value(account.email)
    expect(page).to_have_url(re.compile(r"/sign-in"))
    assert seen.errors_except_expected_statuses(401) == []


def test_sign_out_ends_the_session_on_the_server(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    page.goto("/sign-in")
    page.get_by_label("Email").fill(account.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == live.settings.cookie_name)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    # the old cookie no longer opens anything: the session is gone server-side
    me = http.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {cookie['value']}"})
    assert me.status_code == 401
    page.goto("/devices")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=%2Fdevices$"))
    assert seen.errors == []


def test_sign_in_works_with_the_keyboard_alone(page: Page, seen: Watch, http: httpx.Client) -> None:
    account = register(http)
    page.goto("/sign-in")
    page.get_by_label("Email").focus()
    page.keyboard.type(account.email)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    # the connect dialog opens from the keyboard and Escape closes it
    page.get_by_role("button", name="Connect a device").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Connect a device")
    expect(dialog).to_be_visible()
    expect(dialog.locator("code")).to_contain_text("--token vpt_")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert seen.errors == []
