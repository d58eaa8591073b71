"""The user-facing commands against a real server on loopback (uvicorn in a thread)."""

from __future__ import annotations

import hashlib
import json
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from testkit.live import serve_in_thread
from tests.conftest import make_settings
from tests.support.api import PASSWORD
from tests.support.models import nef
from visiona.app import create_app
from visiona.cli import app as cli
from visiona.client.commands import render_devices
from visiona.client.http import partial_path
from visiona.kit import migrate

LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server (SQLite, local store, 2 MiB model limit) for this module's tests."""
    data = tmp_path_factory.mktemp("cli-server")
    url = f"sqlite+aiosqlite:///{data / 'visiona.db'}"
    migrate.upgrade(url)
    settings = make_settings(database_url=url, data_dir=data, model_max_bytes=LIMIT)
    with serve_in_thread(create_app(settings)) as live:
        yield live.url


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XDG config directory for the client."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("VISIONA_SERVER", raising=False)
    return home


@pytest.fixture
def account(server: str) -> str:
    """A registered email on the live server."""
    email = f"cli-{uuid.uuid4().hex[:10]}@example.com"
    created = httpx.post(
        f"{server}/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "name": "CLI"},
    )
    assert created.status_code == 201, created.text
    return email


def run(*args: str, stdin: str | None = None) -> Result:
    """Invoke ``visiona ARGS`` in process."""
    return CliRunner().invoke(cli, list(args), input=stdin)


def login(server: str, email: str) -> Result:
    """``visiona login`` with the password typed at the prompt."""
    return run("login", "--server", server, "--email", email, stdin=f"{PASSWORD}\n")


def test_login_saves_a_0600_session_file(server: str, account: str, config_home: Path) -> None:
    result = login(server, account)
    assert result.exit_code == 0, result.output
    assert f"logged in to {server} as {account}" in result.stdout
    saved = config_home / "visiona" / "credentials.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    body = json.loads(saved.read_text())
    assert body["server"] == server
    assert body["token"].startswith("vus_")
    assert PASSWORD not in saved.read_text()


def test_wrong_password_is_one_line_and_saves_nothing(
    server: str, account: str, config_home: Path
) -> None:
    result = run("login", "--server", server, "--email", account, stdin="wrong password\n")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: Invalid email or password. (invalid_credentials, HTTP 401); run `visiona login`"
    ]
    assert not (config_home / "visiona" / "credentials.json").exists()


def test_upload_list_download_round_trip(
    server: str, account: str, config_home: Path, tmp_path: Path
) -> None:
    assert login(server, account).exit_code == 0
    content = nef(1024 * 1024 + 17)
    source = tmp_path / "people detector.nef"
    source.write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()

    up = run(
        "models", "upload", str(source), "--chip", "kl720", "--label", "person", "--label", "face"
    )
    assert up.exit_code == 0, up.output
    assert f"sha256 {sha}" in up.stdout
    model_id = up.stdout.split()[1]

    listed = run("models", "list", "--json")
    assert listed.exit_code == 0, listed.output
    items = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(m["id"], m["name"], m["labels"]) for m in items] == [
        (model_id, "people detector", ["person", "face"])
    ]
    table = run("models", "list", "--chip", "kl720")
    assert model_id in table.stdout
    assert "1 model(s)" in table.stdout
    assert "0 model(s)" in run("models", "list", "--chip", "kl520").stdout

    target = tmp_path / "out" / "copy.nef"
    target.parent.mkdir()
    down = run("models", "download", model_id, "-o", str(target))
    assert down.exit_code == 0, down.output
    assert target.read_bytes() == content
    assert f"sha256 {sha} ok" in down.stdout
    assert list(target.parent.iterdir()) == [target]  # no partial file left

    # An interrupted download resumes from its partial file with a range request.
    resumed = tmp_path / "out" / "resumed.nef"
    partial_path(resumed, sha).write_bytes(content[:300_000])
    again = run("models", "download", model_id, "-o", str(resumed))
    assert again.exit_code == 0, again.output
    assert resumed.read_bytes() == content
    assert not partial_path(resumed, sha).exists()

    # A partial file that is not a prefix of the model fails the sha256 check (which
    # also proves the client resumed with a 206: a 200 would have started over), is
    # dropped, and the next attempt succeeds.
    broken = tmp_path / "out" / "broken.nef"
    partial_path(broken, sha).write_bytes(b"not the model")
    failed = run("models", "download", model_id, "-o", str(broken))
    assert failed.exit_code == 1
    assert "does not match its sha256" in failed.stderr
    assert not broken.exists()
    assert not partial_path(broken, sha).exists()
    assert run("models", "download", model_id, "-o", str(broken)).exit_code == 0
    assert broken.read_bytes() == content


def test_errors_are_one_line_with_a_non_zero_exit(
    server: str, account: str, config_home: Path, tmp_path: Path
) -> None:
    not_logged_in = run("devices", "list")
    assert not_logged_in.exit_code == 1
    assert not_logged_in.stderr.strip() == "error: not logged in; run `visiona login` first"

    assert login(server, account).exit_code == 0
    small = tmp_path / "m.nef"
    small.write_bytes(nef(100))
    bad_chip = run("models", "upload", str(small), "--chip", "kl999")
    assert bad_chip.exit_code == 2  # refused locally, before any byte is sent
    assert "kl999" in bad_chip.stderr
    bad_label = run("models", "upload", str(small), "--chip", "KL520", "--label", "x" * 101)
    assert bad_label.exit_code == 1
    assert bad_label.stderr.startswith("error: The request is not valid. labels.0: ")
    assert bad_label.stderr.strip().endswith("(validation_error, HTTP 422)")
    assert len(bad_label.stderr.strip().splitlines()) == 1

    missing = run("models", "download", str(uuid.uuid4()), "-o", str(tmp_path / "x.nef"))
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "error: Model not found. (not_found, HTTP 404)"
    assert not (tmp_path / "x.nef").exists()

    big = tmp_path / "big.nef"
    big.write_bytes(nef(LIMIT + 1))
    too_big = run("models", "upload", str(big), "--chip", "kl520")
    assert too_big.exit_code == 1
    assert len(too_big.stderr.strip().splitlines()) == 1
    assert "(payload_too_large, HTTP 413)" in too_big.stderr

    unreachable = run("models", "list", "--server", "http://127.0.0.1:9")
    assert unreachable.exit_code == 1
    assert unreachable.stderr.strip() == "error: cannot reach http://127.0.0.1:9"


def test_devices_table_rendering() -> None:
    text = render_devices(
        [
            {
                "id": "d1",
                "name": "desk",
                "device_type": "kl520",
                "serial_number": "SN1",
                "remote_status": "online",
                "status": "unknown",
            }
        ]
    )
    assert "desk" in text
    assert "online" in text
    assert text.endswith("1 device(s)")


def test_devices_list_shows_the_users_devices(server: str, account: str, config_home: Path) -> None:
    assert login(server, account).exit_code == 0
    token = json.loads(next(config_home.rglob("credentials.json")).read_text())["token"]
    created = httpx.post(
        f"{server}/api/v1/devices",
        json={"name": "bench-pc", "device_type": "kl720", "serial_number": "CLI-SN-7"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text

    table = run("devices", "list")
    assert table.exit_code == 0, table.stderr
    assert "bench-pc" in table.stdout
    assert "CLI-SN-7" in table.stdout
    assert "offline" in table.stdout

    as_json = run("devices", "list", "--json")
    assert as_json.exit_code == 0
    items = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [item["serial_number"] for item in items] == ["CLI-SN-7"]
