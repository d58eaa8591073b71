"""`visiona webhooks …` against a real server on loopback: create (the secret printed
once, with a warning), list, show, update, disable/enable, test, deliveries, delete."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from testkit.live import serve_in_thread
from tests.support.api import PASSWORD
from tests.support.settings import make_settings
from visiona.app import create_app
from visiona.cli import app as cli
from visiona.kit import migrate

API = "/api/v1"
HOOK = "https://hooks.example.com/in"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server (SQLite, local store) for this module's tests."""
    data = tmp_path_factory.mktemp("cli-webhooks")
    url = f"sqlite+aiosqlite:///{data / 'visiona.db'}"
    migrate.upgrade(url)
    with serve_in_thread(create_app(make_settings(database_url=url, data_dir=data))) as live:
        yield live.url


@pytest.fixture
def logged_in(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new user logged in with the client (its own config directory)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("VISIONA_SERVER", raising=False)
    monkeypatch.delenv("VISIONA_API_KEY", raising=False)
    email = f"hooks-{uuid.uuid4().hex[:10]}@example.com"
    created = httpx.post(
        f"{server}{API}/auth/register", json={"email": email, "password": PASSWORD, "name": "H"}
    )
    assert created.status_code == 201, created.text
    result = run("login", "--server", server, "--email", email, stdin=f"{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    return email


def run(*args: str, stdin: str | None = None) -> Result:
    """Invoke ``visiona ARGS`` in process."""
    return CliRunner().invoke(cli, list(args), input=stdin)


def _json(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_create_prints_the_secret_once_with_a_warning(logged_in: str) -> None:
    made = run("webhooks", "create", HOOK, "--event", "device.*", "-e", "rollout.failed")
    assert made.exit_code == 0, made.output
    secret = next(w for w in made.stdout.split() if w.startswith("whsec_"))
    assert "shown once" in made.stderr
    listed = run("webhooks", "list")
    assert listed.exit_code == 0, listed.output
    assert HOOK in listed.stdout
    assert "device.* rollout.failed" in listed.stdout
    assert "enabled" in listed.stdout
    assert secret not in listed.stdout
    (item,) = _json(run("webhooks", "list", "--json"))
    assert "secret" not in item
    shown = run("webhooks", "show", item["id"][:8])
    assert shown.exit_code == 0, shown.output
    assert secret not in shown.stdout
    assert item["id"] in shown.stdout


def test_every_command_on_one_endpoint(logged_in: str) -> None:
    (made,) = _json(
        run("webhooks", "create", HOOK, "--event", "*", "--description", "ops", "--json")
    )
    assert made["secret"].startswith("whsec_")
    webhook_id = made["id"]
    (updated,) = _json(
        run("webhooks", "update", HOOK, "--url", f"{HOOK}/2", "-e", "model.*", "--json")
    )
    assert updated["url"] == f"{HOOK}/2"
    assert updated["events"] == ["model.*"]
    (queued,) = _json(run("webhooks", "test", webhook_id, "--json"))
    table = run("webhooks", "deliveries", webhook_id)
    assert table.exit_code == 0, table.output
    assert "webhook.test" in table.stdout
    assert "pending" in table.stdout
    deliveries = _json(run("webhooks", "deliveries", webhook_id, "--state", "pending", "--json"))
    assert queued["delivery_id"] in [d["id"] for d in deliveries]
    assert _json(run("webhooks", "deliveries", webhook_id, "--state", "failed", "--json")) == []
    (off,) = _json(run("webhooks", "disable", webhook_id, "--json"))
    assert off["enabled"] is False
    assert off["disabled_reason"] == "disabled by a user"
    assert "disabled by a user" in run("webhooks", "list").stdout
    refused = run("webhooks", "test", webhook_id)
    assert refused.exit_code == 1
    assert "webhook_disabled" in refused.stderr or "disabled" in refused.stderr
    (on,) = _json(run("webhooks", "enable", webhook_id, "--json"))
    assert on["enabled"] is True
    assert on["disabled_reason"] is None
    kept = run("webhooks", "delete", webhook_id, stdin="n\n")
    assert kept.exit_code == 1
    assert _json(run("webhooks", "delete", webhook_id, "--yes", "--json")) == [
        {"deleted": webhook_id}
    ]
    assert _json(run("webhooks", "list", "--json")) == []


def test_usage_errors_are_one_line(logged_in: str) -> None:
    no_event = run("webhooks", "create", HOOK)
    assert no_event.exit_code == 1
    assert "--event" in no_event.stderr
    bad_url = run("webhooks", "create", "ftp://x", "-e", "*")
    assert bad_url.exit_code == 1
    assert "invalid_webhook_url" in bad_url.stderr or "http" in bad_url.stderr
    unknown = run("webhooks", "show", "nope")
    assert unknown.exit_code == 1
    assert "no webhook endpoint" in unknown.stderr
    bad_state = run("webhooks", "deliveries", str(uuid.uuid4()), "--state", "lost")
    assert bad_state.exit_code == 1
