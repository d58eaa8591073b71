"""The models page in Chromium: upload with real progress, errors inline, rename, delete."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
from playwright.sync_api import Locator, Page, expect

from tests.support.console import MODEL_MAX_BYTES, Live, Watch, register, sign_in, upload_model


def _row(page: Page, name: str) -> Locator:
    return page.locator("tr[data-model-id]").filter(has_text=name)


def test_upload_a_few_mib_with_progress_then_see_it_listed(
    page: Page, seen: Watch, http: httpx.Client, live: Live, tmp_path: Path
) -> None:
    sign_in(page.context, live, register(http))
    data = bytes(range(256)) * (4 * 4096)  # 4 MiB
    model = tmp_path / "yolo-tiny.nef"
    model.write_bytes(data)
    page.goto("/models")
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    expect(page.get_by_text("Nothing uploaded yet")).to_be_visible()
    # record every value the progress bar takes while the upload runs
    page.evaluate(
        """() => {
          window.__progress = [];
          const bar = document.querySelector('progress');
          new MutationObserver(() => window.__progress.push(bar.value))
            .observe(bar, {attributes: true, attributeFilter: ['value']});
        }"""
    )
    page.get_by_label("File").set_input_files(model)
    page.get_by_label("Target chip").select_option("kl520")
    page.get_by_label("Name").fill("YOLO tiny")
    page.get_by_label("Labels").fill("person, car")
    page.get_by_role("button", name="Upload").click()
    row = _row(page, "YOLO tiny")
    expect(row).to_be_visible(timeout=30_000)
    expect(row).to_contain_text("KL520")
    expect(row).to_contain_text("4.2 MB")  # decimal units, as the CLI prints them
    expect(row).to_contain_text("person")
    expect(row).to_contain_text(hashlib.sha256(data).hexdigest()[:12])
    progress = page.get_by_role("progressbar")
    expect(progress).to_have_attribute("value", "100")
    expect(page.get_by_text("Uploaded YOLO tiny.")).to_be_visible()
    # the bar started at 0 and the upload's progress events drove it up to 100
    values = page.evaluate("window.__progress")
    assert values[0] == 0
    assert values[-1] == 100
    assert values == sorted(values)
    href = row.get_by_role("link", name="Download YOLO tiny").get_attribute("href")
    assert href is not None
    assert href.endswith("/file")
    assert seen.errors == []


def test_too_large_and_missing_chip_are_inline_errors(
    page: Page, seen: Watch, http: httpx.Client, live: Live, tmp_path: Path
) -> None:
    sign_in(page.context, live, register(http))
    big = tmp_path / "big.nef"
    big.write_bytes(b"\0" * (MODEL_MAX_BYTES + 1))
    page.goto("/models")
    page.get_by_label("File").set_input_files(big)
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("Target chip"))
    page.get_by_label("Target chip").select_option("kl720")
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("too large"))
    expect(page.locator("tr[data-model-id]")).to_have_count(0)
    assert seen.errors == []


def test_filter_rename_and_delete_with_confirmation(
    page: Page, seen: Watch, http: httpx.Client, live: Live
) -> None:
    account = register(http)
    upload_model(http, account, "Alpha", b"a" * 1000)
    upload_model(http, account, "Beta", b"b" * 2000, chip="kl720")
    sign_in(page.context, live, account)
    page.goto("/models")
    page.get_by_label("Filter by chip").select_option("kl720")
    expect(page).to_have_url(re.compile(r"chip=kl720"))
    expect(_row(page, "Beta")).to_be_visible()
    expect(_row(page, "Alpha")).to_have_count(0)
    page.get_by_label("Filter by source").select_option("converted")
    expect(page).to_have_url(re.compile(r"source=converted"))
    expect(page.get_by_text("No model matches this filter")).to_be_visible()
    page.goto("/models")

    _row(page, "Alpha").get_by_role("button", name="Rename").click()
    dialog = page.get_by_role("dialog", name="Rename model")
    dialog.get_by_label("New name").fill("Alpha v2")
    dialog.get_by_role("button", name="Save").click()
    expect(_row(page, "Alpha v2")).to_be_visible()

    _row(page, "Beta").get_by_role("button", name="Delete").click()
    confirm = page.get_by_role("dialog")
    expect(confirm).to_contain_text("Delete “Beta”?")
    confirm.get_by_role("button", name="Cancel").click()
    expect(_row(page, "Beta")).to_be_visible()
    _row(page, "Beta").get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(_row(page, "Beta")).to_have_count(0)
    names = [m["name"] for m in http.get("/api/v1/models", headers=account.headers).json()["items"]]
    assert names == ["Alpha v2"]
    assert seen.errors == []
