"""Helpers of the browser tests: the live server in a thread, the browser's flags, API calls.

The Playwright tests are synchronous (its sync API cannot run inside an event loop),
so the server runs in uvicorn on its own event loop in a background thread, on a
loopback port chosen by the OS, next to a small device service for the agent to
forward to.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Request

from testkit.device_service import device_app
from testkit.live import serve_app
from visiona.app import create_app
from visiona.kit import migrate
from visiona.kit.settings import Settings

API = "/api/v1"
#: The console tests' model size limit: small enough to be refused in a test, big enough
#: for a few MiB.
MODEL_MAX_BYTES = 8 * 1024 * 1024
PASSWORD = "correct horse battery staple"
#: Debian's chromium, driven through ``executable_path`` (never ``playwright install``)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_args() -> dict[str, Any]:
    """Playwright launch options: Debian's Chromium, headless, nothing fetched from outside.

    ``launch`` gives every browser a fresh temporary user data dir of its own.
    """
    return {"executable_path": CHROMIUM, "args": CHROMIUM_FLAGS, "headless": True}


@dataclass
class Live:
    """The console server and the device service, both on loopback ports."""

    port: int
    device_port: int
    settings: Settings

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def live_server(settings: Settings) -> Iterator[Live]:
    """Migrate, then run the app and a device service in a background thread.

    Everything asynchronous happens in that thread: Playwright's sync API keeps an
    event loop of its own in the test thread.
    """
    ready = threading.Event()
    ports: dict[str, int] = {}
    failure: list[BaseException] = []
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        state["loop"], state["stop"] = asyncio.get_running_loop(), stop
        async with (
            serve_app(create_app(settings), settings) as server,  # configured as `serve`
            serve_app(device_app()) as device,
        ):
            ports.update(server=server.port, device=device.port)
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            assert settings.database_url is not None
            migrate.upgrade(settings.database_url)
            asyncio.run(main())
        except BaseException as err:  # noqa: BLE001 - handed to the test thread below
            failure.append(err)
            ready.set()

    thread = threading.Thread(target=run, name="console-live-server", daemon=True)
    thread.start()
    ready.wait(60)
    if failure or "server" not in ports:
        raise RuntimeError("the live server did not start") from (failure[0] if failure else None)
    try:
        yield Live(port=ports["server"], device_port=ports["device"], settings=settings)
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(30)


@dataclass
class Watch:
    """Every request a page made and every error its console printed."""

    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def on_request(self, request: Request) -> None:
        """Record a request."""
        self.requests.append(request.url)

    def on_console(self, message: ConsoleMessage) -> None:
        """Record a console error."""
        if message.type == "error":
            self.errors.append(message.text)

    def on_page_error(self, error: Exception) -> None:
        """Record an uncaught script error."""
        self.errors.append(f"uncaught: {error}")

    def foreign(self) -> list[str]:
        """Requests that went anywhere but this server."""
        return [url for url in self.requests if not url.startswith(self.origin + "/")]

    def errors_except_expected_statuses(self, *statuses: int) -> list[str]:
        """Console errors, less Chrome's line about an HTTP error the test provoked."""
        expected = tuple(f"status of {status}" for status in statuses)
        return [e for e in self.errors if not any(text in e for text in expected)]


def watch(page: Page, origin: str) -> Watch:
    """Start recording the page's requests and console errors."""
    seen = Watch(origin)
    page.on("request", seen.on_request)
    page.on("console", seen.on_console)
    page.on("pageerror", seen.on_page_error)
    return seen


@dataclass
class Account:
    """A registered user with an API session token."""

    email: str
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        """Bearer authentication headers."""
        return {"Authorization": f"Bearer {self.token}"}


def unique_email() -> str:
    """An email no other test uses."""
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


def register(http: httpx.Client, name: str = "Ada Lovelace") -> Account:
    """Create a user through the API and sign in (a bearer token)."""
    email = unique_email()
    created = http.post(
        f"{API}/auth/register", json={"email": email, "password": PASSWORD, "name": name}
    )
    assert created.status_code == 201, created.text
    login = http.post(f"{API}/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return Account(email=email, name=name, token=login.json()["token"])


def sign_in(context: BrowserContext, live: Live, account: Account) -> None:
    """Give the browser the account's session cookie (as the API's login sets it)."""
    context.add_cookies(
        [
            {
                "name": live.settings.cookie_name,
                "value": account.token,
                "url": live.url,
                "httpOnly": True,
                "sameSite": "Lax",
            }
        ]
    )


def api_json(response: httpx.Response, status: int) -> dict[str, Any]:
    """The JSON object of ``response``, asserting its status first."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def create_device(http: httpx.Client, account: Account, name: str, serial: str) -> dict[str, Any]:
    """Register a device by hand (it has never connected)."""
    return api_json(
        http.post(
            f"{API}/devices",
            json={"name": name, "serial_number": serial, "device_type": "kl520"},
            headers=account.headers,
        ),
        201,
    )


def pair_device(http: httpx.Client, account: Account, name: str) -> dict[str, Any]:
    """Pair a device through the agent's exchange (it gets a session token, no tunnel)."""
    token = api_json(http.post(f"{API}/pairing-tokens", json={}, headers=account.headers), 201)[
        "token"
    ]
    return api_json(
        http.post(
            f"{API}/agent/pair",
            json={
                "pairing_token": token,
                "serial_number": f"SN-{uuid.uuid4().hex[:10]}",
                "device_type": "kl520",
                "name": name,
            },
        ),
        201,
    )


def upload_model(
    http: httpx.Client, account: Account, name: str, data: bytes, chip: str = "kl520"
) -> dict[str, Any]:
    """Upload a model through the API."""
    return api_json(
        http.post(
            f"{API}/models",
            data={"target_chip": chip, "name": name},
            files={"file": (f"{name}.nef", data, "application/octet-stream")},
            headers=account.headers,
        ),
        201,
    )


def start_agent(command: str, workdir: Path, name: str, serial: str) -> subprocess.Popen[bytes]:
    """Run the command the connect dialog shows, as ``python -m visiona agent ...``.

    The agent's state stays under ``workdir`` (session file, deployed models).
    """
    words = command.split()
    assert words[:2] == ["visiona", "agent"], command
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "visiona",
            *words[1:],
            "--session-file",
            str(workdir / "session.json"),
            "--models-dir",
            str(workdir / "models"),
            "--name",
            name,
            "--serial",
            serial,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop_agent(process: subprocess.Popen[bytes]) -> str:
    """Make sure the agent is gone; its stderr (for a failing test's report)."""
    if process.poll() is None:
        process.kill()
    _, stderr = process.communicate(timeout=30)
    return stderr.decode(errors="replace")


def user_id(http: httpx.Client, account: Account) -> str:
    """The account's user id."""
    return str(api_json(http.get(f"{API}/auth/me", headers=account.headers), 200)["id"])


def create_org(http: httpx.Client, owner: Account, name: str) -> str:
    """A new team organisation owned by ``owner``; its id."""
    created = http.post(f"{API}/orgs", json={"name": name}, headers=owner.headers)
    return str(api_json(created, 201)["id"])


def acting(account: Account, org_id: str) -> dict[str, str]:
    """``account``'s headers, acting in ``org_id``."""
    return {**account.headers, "X-Visiona-Org": org_id}


def join(http: httpx.Client, owner: Account, org_id: str, user: Account, role: str) -> None:
    """``user`` joins ``org_id`` with ``role`` through an invitation of ``owner``."""
    invited = api_json(
        http.post(
            f"{API}/orgs/{org_id}/invitations",
            json={"email": user.email, "role": role},
            headers=owner.headers,
        ),
        201,
    )
    accepted = http.post(
        f"{API}/invitations/accept", json={"token": invited["token"]}, headers=user.headers
    )
    api_json(accepted, 200)
