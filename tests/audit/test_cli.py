"""`visiona audit list` against a live server and `visiona audit prune` on a database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner, Result

from testkit.live import serve_in_thread
from tests.support.api import PASSWORD
from tests.support.settings import make_settings
from visiona.app import create_app
from visiona.audit import repository
from visiona.cli import app as cli
from visiona.kit import migrate
from visiona.kit.schema import audit_events


def run(*args: str, stdin: str | None = None) -> Result:
    """Invoke ``visiona ARGS`` in process."""
    return CliRunner().invoke(cli, list(args), input=stdin)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server on SQLite for this module's client tests."""
    data = tmp_path_factory.mktemp("audit-cli")
    url = f"sqlite+aiosqlite:///{data / 'visiona.db'}"
    migrate.upgrade(url)
    with serve_in_thread(create_app(make_settings(database_url=url, data_dir=data))) as live:
        yield live.url


@pytest.fixture
def signed_in(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new account, logged in with `visiona login`; its bearer token."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("VISIONA_SERVER", raising=False)
    email = f"audit-{uuid.uuid4().hex[:10]}@example.com"
    created = httpx.post(
        f"{server}/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "name": "CLI"},
    )
    assert created.status_code == 201
    result = run("login", "--server", server, "--email", email, stdin=f"{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    login = httpx.post(f"{server}/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return str(login.json()["token"])


def test_audit_list_shows_the_trail_and_a_devices_history(server: str, signed_in: str) -> None:
    headers = {"Authorization": f"Bearer {signed_in}"}
    device = httpx.post(
        f"{server}/api/v1/devices",
        json={"name": "Desk", "serial_number": "SN-CLI-1", "device_type": "kl520"},
        headers=headers,
    ).json()
    table = run("audit", "list")
    assert table.exit_code == 0, table.output
    assert "device.created" in table.stdout
    assert "user.registered" in table.stdout
    assert "event(s)" in table.stdout

    lines = run("audit", "list", "--json", "--device", device["id"])
    assert lines.exit_code == 0, lines.output
    events = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [event["action"] for event in events] == ["device.created"]
    assert events[0]["detail"] == {"via": "api", "serial_number": "SN-CLI-1"}

    limited = run("audit", "list", "--json", "--limit", "1", "--action", "user.signed_in")
    assert [json.loads(line)["action"] for line in limited.stdout.splitlines()] == [
        "user.signed_in"
    ]
    foreign = run("audit", "list", "--device", str(uuid.uuid4()))
    assert foreign.exit_code == 1
    assert foreign.stderr.startswith("error: ")


def test_audit_prune_deletes_what_is_older_than_the_retention(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'visiona.db'}"
    migrate.upgrade(url)
    asyncio.run(_insert_ages(url, [500, 400, 100, 1]))
    default = _prune(tmp_path, VISIONA_DATABASE_URL=url)
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip() == "deleted 2 audit event(s) older than 365 day(s)"
    shorter = _prune(tmp_path, "--days", "30", VISIONA_DATABASE_URL=url)
    assert shorter.stdout.strip() == "deleted 1 audit event(s) older than 30 day(s)"
    assert asyncio.run(_count(url)) == 1
    refused = _prune(tmp_path, VISIONA_DATABASE_URL=url, VISIONA_AUDIT_RETENTION_DAYS="0")
    assert refused.returncode == 2
    assert "VISIONA_AUDIT_RETENTION_DAYS" in refused.stderr
    assert asyncio.run(_count(url)) == 1


def _prune(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``visiona audit prune ARGS`` as its own process (it configures logging), in ``cwd``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VISIONA_")}
    return subprocess.run(
        [sys.executable, "-m", "visiona", "audit", "prune", *args],
        cwd=cwd,
        env={**clean, "VISIONA_DATA_DIR": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=120,  # a safety net against a hung process, not a timing claim
        check=False,
    )


async def _insert_ages(url: str, ages: list[int]) -> None:
    engine = create_async_engine(url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            for age in ages:
                await repository.insert_event(
                    conn,
                    {
                        "id": uuid.uuid4(),
                        "occurred_at": now - timedelta(days=age),
                        "owner_id": None,
                        "actor_type": "system",
                        "actor_id": None,
                        "action": "tunnel.disconnected",
                        "target_type": "device",
                        "target_id": None,
                        "device_id": None,
                        "client_addr": None,
                        "request_id": None,
                        "detail": {},
                    },
                )
    finally:
        await engine.dispose()


async def _count(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(select(func.count()).select_from(audit_events))
            return int(result.scalar_one())
    finally:
        await engine.dispose()
