"""Console security: headers, escaping, no inline script, no open redirect; small screens."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Dialog, Page, expect

from tests.support.console import (
    PASSWORD,
    Live,
    Watch,
    create_device,
    pair_device,
    register,
    sign_in,
    upload_model,
)
from visiona.console.security import safe_next

XSS = "<img src=x onerror=alert(1)>"
_TOO_WIDE = """() => Array.from(document.querySelectorAll('main *'))
  .filter((e) => e.getBoundingClientRect().right > window.innerWidth)
  .map((e) => e.tagName + '.' + e.className)"""


def _assert_console_headers(headers: httpx.Headers | dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert "unsafe-inline" not in csp
    assert directives["frame-ancestors"] == "'none'"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"


@pytest.mark.parametrize(
    "path", ["/sign-in", "/sign-up", "/devices", "/", "/static/console.js", "/static/console.css"]
)
def test_console_responses_carry_the_security_headers(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code in (200, 303)
    _assert_console_headers(response.headers)


def test_signed_in_pages_have_the_headers_and_no_inline_script(
    http: httpx.Client, live: Live
) -> None:
    account = register(http)
    device = create_device(http, account, "Headers", "HDR-1")
    pages = ("/devices", f"/devices/{device['id']}", "/models", "/rollouts", "/pairing-tokens")
    for path in (*pages, "/account"):
        response = http.get(
            path, headers={"Cookie": f"{live.settings.cookie_name}={account.token}"}
        )
        assert response.status_code == 200, path
        _assert_console_headers(response.headers)
        scripts = re.findall(r"<script\b[^>]*>", response.text)
        assert scripts == ['<script src="/static/console.js" defer>'], path
        assert " style=" not in response.text, path


def test_user_text_is_shown_as_text_everywhere(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    paired = pair_device(http, account, XSS)
    model = upload_model(http, account, XSS, b"m" * 100)
    http.patch(
        f"/api/v1/models/{model['id']}", json={"labels": [XSS]}, headers=account.headers
    ).raise_for_status()
    dialogs: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    rollout = http.post(
        "/api/v1/rollouts",
        json={"model_id": model["id"], "device_ids": [paired["device_id"]]},
        headers=account.headers,
    )
    assert rollout.status_code == 201, rollout.text
    rollout_page = f"/rollouts/{rollout.json()['id']}"

    page.on("dialog", dismiss)
    sign_in(page.context, live, account)
    for path in (
        "/devices",
        f"/devices/{paired['device_id']}",
        "/models",
        "/pairing-tokens",
        "/rollouts",
        rollout_page,
    ):
        page.goto(path)
        expect(page.get_by_text(XSS, exact=True).first).to_be_visible()
        assert page.locator("main img").count() == 0, path
    page.wait_for_timeout(3500)  # the rollout page's rows, polled, are the server's HTML too
    expect(page.locator("tr[data-device-id]").get_by_text(XSS, exact=True)).to_be_visible()
    page.goto(f"/devices/{paired['device_id']}")
    expect(page.get_by_role("heading", name=XSS, level=1)).to_be_visible()
    assert dialogs == []
    assert seen.errors == []


def test_no_request_leaves_the_server_and_the_console_stays_clean(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    create_device(http, account, "Quiet", "QUIET-1")
    page.goto("/sign-in")
    page.get_by_label("Email").fill(account.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    for name, heading in (
        ("Models", "Models"),
        ("Rollouts", "Rollouts"),
        ("Pairing tokens", "Pairing tokens"),
        ("Account", "Account"),
        ("Devices", "Devices"),
    ):
        page.get_by_role("navigation").get_by_role("link", name=name).click()
        expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
    page.wait_for_timeout(3500)  # one poll of the live status
    assert seen.requests
    assert seen.foreign() == []
    assert seen.errors == []


@pytest.mark.parametrize("width", [375, 1280])
def test_pages_fit_the_screen_at_phone_and_desktop_width(
    page: Page, seen: Watch, http: httpx.Client, live: Live, width: int
) -> None:
    account = register(http)
    device = pair_device(http, account, "A rather long device name for a phone")
    upload_model(http, account, "Wide model name", b"w" * 100)
    sign_in(page.context, live, account)
    page.set_viewport_size({"width": width, "height": 800})
    for path in (
        "/devices",
        f"/devices/{device['device_id']}",
        "/models",
        "/rollouts",
        "/pairing-tokens",
        "/members",
    ):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        wide = page.evaluate(_TOO_WIDE) if overflow > 0 else []
        assert overflow <= 0, f"{path} is {overflow}px too wide at {width}px: {wide}"
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        expect(page.get_by_role("navigation").get_by_role("link", name="Models")).to_be_visible()
    assert seen.errors == []


def test_pairing_tokens_page_lists_used_and_unused_tokens_and_revokes(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    pair_device(http, account, "Paired one")
    http.post("/api/v1/pairing-tokens", json={}, headers=account.headers).raise_for_status()
    sign_in(page.context, live, account)
    page.goto("/pairing-tokens")
    rows = page.locator("tr[data-token-id]")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text=re.compile(r"\bUsed\b"))).to_contain_text("Paired one")
    unused = rows.filter(has_text=re.compile(r"\bUnused\b"))
    unused.get_by_role("button", name="Revoke").click()
    expect(rows.filter(has_text="Revoked")).to_have_count(1)
    expect(page.get_by_role("button", name="Revoke")).to_have_count(0)
    assert seen.errors == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/models?chip=kl520", "/models?chip=kl520"),
        ("//evil.example/", "/devices"),
        ("/\\evil.example", "/devices"),
        ("https://evil.example/", "/devices"),
        ("", "/devices"),
        (None, "/devices"),
    ],
)
def test_sign_in_only_returns_to_paths_of_this_server(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected
