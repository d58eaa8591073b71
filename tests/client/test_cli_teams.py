"""The team commands against a real server on loopback: API keys instead of a login
(`VISIONA_API_KEY`, `--api-key`), `org list|switch`, `members ...` and `keys ...`."""

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
from tests.support.models import nef
from tests.support.settings import make_settings
from visiona.app import create_app
from visiona.cli import app as cli
from visiona.kit import migrate

API = "/api/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server (SQLite, local store) for this module's tests."""
    data = tmp_path_factory.mktemp("cli-teams")
    url = f"sqlite+aiosqlite:///{data / 'visiona.db'}"
    migrate.upgrade(url)
    with serve_in_thread(create_app(make_settings(database_url=url, data_dir=data))) as live:
        yield live.url


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XDG config directory for the client, no server nor key in the env."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("VISIONA_SERVER", raising=False)
    monkeypatch.delenv("VISIONA_API_KEY", raising=False)
    return home


def _register(server: str) -> str:
    email = f"team-{uuid.uuid4().hex[:10]}@example.com"
    created = httpx.post(
        f"{server}{API}/auth/register", json={"email": email, "password": PASSWORD, "name": "T"}
    )
    assert created.status_code == 201, created.text
    return email


def _token(server: str, email: str) -> str:
    login = httpx.post(f"{server}{API}/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return str(login.json()["token"])


def run(*args: str, stdin: str | None = None) -> Result:
    """Invoke ``visiona ARGS`` in process."""
    return CliRunner().invoke(cli, list(args), input=stdin)


def _login(server: str, email: str) -> None:
    result = run("login", "--server", server, "--email", email, stdin=f"{PASSWORD}\n")
    assert result.exit_code == 0, result.output


def _lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_an_api_key_with_models_write_uploads_a_model_and_cannot_unpair(
    server: str, config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    email = _register(server)
    _login(server, email)
    device = httpx.post(
        f"{server}{API}/devices",
        json={"name": "cam", "serial_number": f"SN-{uuid.uuid4().hex[:8]}"},
        headers={"Authorization": f"Bearer {_token(server, email)}"},
    )
    assert device.status_code == 201, device.text
    made = _lines(run("keys", "create", "ci", "--scope", "models:write", "--json"))[0]
    key = made["key"]
    assert key.startswith("vak_")
    assert made["scopes"] == ["models:write"]
    # a machine with no login: the key and the server from the environment
    assert run("logout").exit_code == 0
    monkeypatch.setenv("VISIONA_API_KEY", key)
    monkeypatch.setenv("VISIONA_SERVER", server)
    source = tmp_path / "detector.nef"
    source.write_bytes(nef(4096))
    up = run("models", "upload", str(source), "--chip", "kl520")
    assert up.exit_code == 0, up.output
    assert "uploaded" in up.stdout
    unpair = run("devices", "unpair", device.json()["id"], "--yes")
    assert unpair.exit_code == 1
    assert "devices:write" in unpair.stderr
    assert "forbidden" in unpair.stderr
    assert "visiona login" not in unpair.stderr
    # the option wins over the environment; a revoked key is refused
    monkeypatch.delenv("VISIONA_API_KEY")
    listed = run("--api-key", key, "models", "list", "--json")
    assert [m["name"] for m in _lines(listed)] == ["detector"]
    assert run("--api-key", "not-a-key", "models", "list").exit_code == 1


def test_keys_list_and_revoke(server: str, config_home: Path) -> None:
    _login(server, _register(server))
    made = _lines(
        run("keys", "create", "deployer", "--scope", "deploy", "--scope", "read",
            "--expires-in-days", "7", "--json")
    )[0]  # fmt: skip
    table = run("keys", "list")
    assert table.exit_code == 0, table.output
    assert made["prefix"] in table.stdout
    assert made["key"] not in table.stdout
    (listed,) = _lines(run("keys", "list", "--json"))
    assert (listed["id"], listed["state"], listed["scopes"]) == (
        made["id"],
        "active",
        ["deploy", "read"],
    )
    assert "key" not in listed
    assert _lines(run("keys", "revoke", made["id"], "--json")) == [{"revoked": made["id"]}]
    assert _lines(run("keys", "list", "--json"))[0]["state"] == "revoked"
    refused = run("--api-key", made["key"], "devices", "list", "--server", server)
    assert refused.exit_code == 1
    assert "unauthorized" in refused.stderr
    too_long = run("keys", "create", "x", "--scope", "read", "--expires-in-days", "366")
    assert too_long.exit_code != 0


def test_org_switch_and_members(server: str, config_home: Path) -> None:
    owner = _register(server)
    _login(server, owner)
    token = _token(server, owner)
    team = httpx.post(
        f"{server}{API}/orgs",
        json={"name": "Night shift"},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    orgs = _lines(run("org", "list", "--json"))
    assert {o["name"]: o["current"] for o in orgs}["Night shift"] is False
    switched = run("org", "switch", "Night shift")
    assert switched.exit_code == 0, switched.output
    assert "acting in Night shift" in switched.stdout
    assert {o["id"]: o["current"] for o in _lines(run("org", "list", "--json"))}[team["id"]]
    assert (config_home / "visiona" / "cli.json").exists()

    colleague = _register(server)
    invited = _lines(run("members", "invite", colleague, "--role", "viewer", "--json"))[0]
    accepted = httpx.post(
        f"{server}{API}/invitations/accept",
        json={"token": invited["token"]},
        headers={"Authorization": f"Bearer {_token(server, colleague)}"},
    )
    assert accepted.status_code == 200, accepted.text
    members = {m["email"]: m["role"] for m in _lines(run("members", "list", "--json"))}
    assert members == {owner: "owner", colleague: "viewer"}
    changed = run("members", "set-role", colleague, "operator")
    assert changed.exit_code == 0, changed.output
    assert f"{colleague} is now operator" in changed.stdout
    # commands act in the chosen organisation: a key made now belongs to the team
    key = _lines(run("keys", "create", "team-ci", "--scope", "read", "--json"))[0]
    team_keys = httpx.get(
        f"{server}{API}/api-keys",
        headers={"Authorization": f"Bearer {token}", "X-Visiona-Org": team["id"]},
    )
    assert [k["id"] for k in team_keys.json()["items"]] == [key["id"]]
    removed = run("members", "remove", colleague, "--json")
    assert removed.exit_code == 0, removed.output
    assert [m["email"] for m in _lines(run("members", "list", "--json"))] == [owner]
    assert run("org", "switch", "no such org").exit_code == 1
