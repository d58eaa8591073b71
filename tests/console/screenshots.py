"""``make screenshots``: render each console page with demo data into docs/screenshots/.

Uses the browser tests' setup (the live server in a thread, Debian's Chromium through
Playwright, real ``visiona agent`` processes), so the pictures show what the tests see.
Run: ``.venv/bin/python -m tests.console.screenshots [OUTPUT_DIR]``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, ViewportSize, sync_playwright

from tests.support.console import (
    API,
    Account,
    Live,
    create_device,
    launch_args,
    live_server,
    pair_device,
    register,
    sign_in,
    start_agent,
    stop_agent,
    upload_model,
)
from tests.support.settings import make_settings

DESKTOP: ViewportSize = {"width": 1280, "height": 760}
PHONE: ViewportSize = {"width": 375, "height": 720}


def _agent(
    http: httpx.Client, live: Live, account: Account, work: Path, *, name: str, serial: str
) -> subprocess.Popen[bytes]:
    """Start a real agent for a new pairing token of ``account``."""
    token = http.post(f"{API}/pairing-tokens", json={}, headers=account.headers).json()["token"]
    command = (
        f"visiona agent --server {live.url} --token {token} --forward 127.0.0.1:{live.device_port}"
    )
    folder = work / serial
    folder.mkdir()
    return start_agent(command, folder, name, serial)


def _wait_online(http: httpx.Client, account: Account, names: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        items = http.get(f"{API}/devices", headers=account.headers).json()["items"]
        by_name = {d["name"]: d for d in items}
        if all(by_name.get(n, {}).get("remote_status") == "online" for n in names):
            return by_name
        time.sleep(0.3)
    raise RuntimeError(f"devices {names} did not come online")


def _shoot(page: Page, out: Path, name: str) -> None:
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / f"{name}.png"))
    print(f"wrote {out / name}.png")  # noqa: T201 - the command's output


def main(out: Path) -> None:
    """Seed demo data through the API and real agents, then photograph every page."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = make_settings(
            database_url=f"sqlite+aiosqlite:///{work / 'visiona.db'}",
            data_dir=work,
            redis_url=None,
            tunnel_status_interval=2.0,
            tunnel_ping_interval=1.0,
        )
        with live_server(settings) as live, httpx.Client(base_url=live.url, timeout=60) as http:
            account = register(http, name="Ada Lovelace")
            face = upload_model(http, account, "YOLOv5 face", bytes(range(256)) * 12000)
            person = upload_model(http, account, "Person detector", bytes(range(256)) * 30000)
            upload_model(http, account, "Pose estimation", b"p" * 2_500_000, chip="kl720")
            agents = [
                _agent(http, live, account, work, name="Lab bench KL520", serial="KL520-0017"),
                _agent(http, live, account, work, name="Entrance camera", serial="KL520-0042"),
                _agent(http, live, account, work, name="Warehouse door", serial="KL520-0108"),
            ]
            try:
                by_name = _wait_online(
                    http, account, {"Lab bench KL520", "Entrance camera", "Warehouse door"}
                )
                agents[2].send_signal(signal.SIGTERM)  # seen before, offline now
                agents[2].wait(30)
                field = pair_device(http, account, "Field unit 3")
                spare = create_device(http, account, "Spare dongle", "KL520-0200")
                lab = by_name["Lab bench KL520"]["id"]
                http.post(
                    f"{API}/devices/{lab}/deployments",
                    json={"model_id": face["id"]},
                    headers=account.headers,
                ).raise_for_status()
                online_first = [
                    by_name[name]["id"]
                    for name in ("Lab bench KL520", "Entrance camera", "Warehouse door")
                ]
                rollout = _rollout(
                    http, account, person["id"], [*online_first, field["device_id"], spare["id"]]
                )
                _photograph(live, account, lab, rollout, out)
            finally:
                for agent in agents:
                    stop_agent(agent)


def _rollout(http: httpx.Client, account: Account, model_id: str, device_ids: list[str]) -> str:
    """A rollout of ``model_id`` to ``device_ids`` (a canary of one, then batches of two;
    offline devices hold no batch), once the online devices have it and the offline ones
    wait; its id."""
    created = http.post(
        f"{API}/rollouts",
        json={
            "model_id": model_id,
            "device_ids": device_ids,
            "canary": 1,
            "batch": 2,
            "max_failure_percent": 100,
        },
        headers=account.headers,
    )
    created.raise_for_status()
    rollout_id = str(created.json()["id"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = http.get(f"{API}/rollouts/{rollout_id}", headers=account.headers).json()
        counts = found["counts"]
        if found["unbatched"] == 0 and counts["queued"] + counts["transferring"] == 0:
            break
        time.sleep(0.5)
    return rollout_id


def _photograph(live: Live, account: Account, device_id: str, rollout_id: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**launch_args())
        context = browser.new_context(base_url=live.url, viewport=DESKTOP, color_scheme="light")
        page = context.new_page()
        page.goto("/sign-in")
        _shoot(page, out, "sign-in")
        sign_in(context, live, account)
        page.goto("/devices")
        _shoot(page, out, "devices")
        page.get_by_role("button", name="Connect a device").click()
        page.get_by_role("dialog").locator("code").get_by_text("vpt_").wait_for()
        _shoot(page, out, "connect-dialog")
        page.get_by_role("dialog").get_by_role("button", name="Close").click()
        page.goto(f"/devices/{device_id}")
        _shoot(page, out, "device")
        page.goto("/models")
        _shoot(page, out, "models")
        page.goto("/rollouts")
        _shoot(page, out, "rollouts")
        page.goto(f"/rollouts/{rollout_id}")
        _shoot(page, out, "rollout")
        page.goto("/pairing-tokens")
        _shoot(page, out, "pairing-tokens")
        page.goto("/activity")
        _shoot(page, out, "activity")
        page.goto("/account")
        _shoot(page, out, "account")
        dark = browser.new_context(base_url=live.url, viewport=PHONE, color_scheme="dark")
        sign_in(dark, live, account)
        phone = dark.new_page()
        phone.goto("/devices")
        _shoot(phone, out, "devices-phone-dark")
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/screenshots"))
