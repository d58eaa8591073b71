"""The user-facing commands against a real server on loopback (uvicorn in a thread)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from testkit.live import serve_in_thread
from tests.support.api import PASSWORD
from tests.support.models import nef
from tests.support.settings import make_settings
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
        "error: Invalid email or password. (invalid_credentials, HTTP 401)"
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
                "busy": True,
            }
        ]
    )
    assert "desk" in text
    assert "online" in text
    assert "busy" in text
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


# -- the complete user CLI (issue 11, item 2) -------------------------------------------


def _token_of(config_home: Path) -> str:
    return str(json.loads(next(config_home.rglob("credentials.json")).read_text())["token"])


def test_login_prompts_for_email_and_hidden_password(
    server: str, account: str, config_home: Path
) -> None:
    result = run("login", "--server", server, stdin=f"{account}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "Email:" in result.stdout
    assert "Password:" in result.stdout
    assert PASSWORD not in result.stdout  # hidden input is not echoed


def test_logout_ends_the_session_on_the_server_and_forgets_it(
    server: str, account: str, config_home: Path
) -> None:
    assert login(server, account).exit_code == 0
    token = _token_of(config_home)
    result = run("logout")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"logged out of {server}"
    assert not (config_home / "visiona" / "credentials.json").exists()
    me = httpx.get(f"{server}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 401
    assert run("logout").stdout.strip() == "not logged in"


def test_models_show_rename_delete(
    server: str, account: str, config_home: Path, tmp_path: Path
) -> None:
    assert login(server, account).exit_code == 0
    source = tmp_path / "cam.nef"
    source.write_bytes(nef(2_500))
    up = run("models", "upload", str(source), "--chip", "KL630")
    assert up.exit_code == 0, up.output
    model_id = up.stdout.split()[1]
    assert "2.5 kB" in up.stdout  # one unit system: decimal, as the progress bars

    shown = run("models", "show", model_id, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["target_chip"] == "kl630"
    table = run("models", "show", model_id)
    assert "2.5 kB" in table.stdout
    assert "cam" in table.stdout

    renamed = run("models", "rename", model_id, "front camera")
    assert renamed.exit_code == 0, renamed.output
    assert json.loads(run("models", "show", model_id, "--json").stdout)["name"] == "front camera"

    refused = run("models", "delete", model_id, stdin="n\n")
    assert refused.exit_code == 1
    assert run("models", "show", model_id).exit_code == 0
    deleted = run("models", "delete", model_id, "--yes")
    assert deleted.exit_code == 0, deleted.output
    gone = run("models", "show", model_id)
    assert gone.exit_code == 1
    assert gone.stderr.strip() == "error: Model not found. (not_found, HTTP 404)"


def test_devices_show_rename_unpair_with_confirmation(
    server: str, account: str, config_home: Path
) -> None:
    assert login(server, account).exit_code == 0
    created = httpx.post(
        f"{server}/api/v1/devices",
        json={"name": "lab", "device_type": "kl520", "serial_number": f"SN-{uuid.uuid4().hex[:8]}"},
        headers={"Authorization": f"Bearer {_token_of(config_home)}"},
    ).json()
    device_id = created["id"]
    shown = run("devices", "show", device_id, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["name"] == "lab"
    assert "lab" in run("devices", "show", device_id).stdout

    assert run("devices", "rename", device_id, "lab bench").exit_code == 0
    assert json.loads(run("devices", "show", device_id, "--json").stdout)["name"] == "lab bench"

    kept = run("devices", "unpair", device_id, stdin="n\n")
    assert kept.exit_code == 1
    assert "unpair lab bench" in kept.stdout
    assert run("devices", "show", device_id).exit_code == 0
    unpaired = run("devices", "unpair", device_id, stdin="y\n")
    assert unpaired.exit_code == 0, unpaired.output
    assert run("devices", "show", device_id).exit_code == 1
    assert run("devices", "unpair", str(uuid.uuid4()), "--yes").exit_code == 1


def test_devices_tag_several_at_once_and_list_by_selector(
    server: str, account: str, config_home: Path
) -> None:
    assert login(server, account).exit_code == 0
    headers = {"Authorization": f"Bearer {_token_of(config_home)}"}
    for name in ("tag-a", "tag-b", "tag-c"):
        created = httpx.post(
            f"{server}/api/v1/devices",
            json={"name": name, "device_type": "KL520", "serial_number": f"SN-{name}"},
            headers=headers,
        )
        assert created.status_code == 201, created.text

    tagged = run("devices", "tag", "tag-a", "tag-b", "site=lab", "room=2")
    assert tagged.exit_code == 0, tagged.output
    assert [line.split()[2] for line in tagged.stdout.splitlines()] == ["tag-a:", "tag-b:"]
    assert "room=2,site=lab" in tagged.stdout

    def selected(selector: str) -> list[str]:
        listed = run("devices", "list", "--select", selector, "--json")
        assert listed.exit_code == 0, listed.output
        return [json.loads(line)["name"] for line in listed.stdout.splitlines()]

    assert selected("site=lab") == ["tag-a", "tag-b"]
    assert selected("chip in (kl520),!site") == ["tag-c"]
    table = run("devices", "list", "-l", "site=lab")
    assert "room=2,site=lab" in table.stdout
    assert table.stdout.endswith("2 device(s)\n")

    by_selector = run(
        "devices", "tag", "--select", "site=lab", "-r", "room", "retired=yes", "--json"
    )
    assert by_selector.exit_code == 0, by_selector.output
    answers = [json.loads(line) for line in by_selector.stdout.splitlines()]
    assert [a["tags"] for a in answers] == [
        {"chip": "kl520", "retired": "yes", "site": "lab", "type": "KL520"}
    ] * 2
    assert selected("!retired") == ["tag-c"]

    bad = run("devices", "list", "--select", "site in lab")
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: Invalid selector at position 8:")
    assert "(invalid_selector, HTTP 400)" in bad.stderr
    reserved = run("devices", "tag", "tag-a", "tag-c", "chip=kl720")
    assert reserved.exit_code == 1
    assert reserved.stderr.count("reserved_tag") == 2  # each device said why
    assert run("devices", "tag", "tag-a").exit_code == 1  # nothing to do
    assert run("devices", "tag", "tag-a", "--select", "x", "a=b").exit_code == 1


def test_pairing_tokens_create_list_revoke(server: str, account: str, config_home: Path) -> None:
    assert login(server, account).exit_code == 0
    created = run("pairing-tokens", "create", "--json")
    assert created.exit_code == 0, created.output
    body = json.loads(created.stdout)
    assert body["agent_command"] == (
        f"visiona agent --server {server} --token {body['token']} --forward 127.0.0.1:8000"
    )
    text = run("pairing-tokens", "create", "--forward", "127.0.0.1:9000")
    assert "visiona agent --server" in text.stdout
    assert "--forward 127.0.0.1:9000" in text.stdout

    listed = run("pairing-tokens", "list", "--json")
    items = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(items) == 2
    assert all("token" not in item for item in items)
    assert "unused" in run("pairing-tokens", "list").stdout

    revoked = run("pairing-tokens", "revoke", body["id"])
    assert revoked.exit_code == 0, revoked.output
    states = {
        json.loads(line)["id"]: json.loads(line)["revoked_at"]
        for line in run("pairing-tokens", "list", "--json").stdout.splitlines()
    }
    assert states[body["id"]] is not None
    pair = httpx.post(
        f"{server}/api/v1/agent/pair",
        json={
            "pairing_token": body["token"],
            "serial_number": "SN-R",
            "device_type": "kl520",
            "name": "x",
        },
    )
    assert pair.status_code == 401


def test_deploy_to_a_real_agent_and_list_deployments(
    server: str, account: str, config_home: Path, tmp_path: Path
) -> None:
    assert login(server, account).exit_code == 0
    source = tmp_path / "det.nef"
    content = nef(300_000)
    source.write_bytes(content)
    model_id = run("models", "upload", str(source), "--chip", "kl720").stdout.split()[1]
    command = run("pairing-tokens", "create").stdout.splitlines()[-1].split()
    assert command[:2] == ["visiona", "agent"]
    models_dir = tmp_path / "models"
    extra = ["--session-file", str(tmp_path / "agent.json"), "--models-dir", str(models_dir)]
    extra += ["--type", "kl720", "--serial", f"SN-{uuid.uuid4().hex[:8]}"]
    agent = subprocess.Popen(
        [sys.executable, "-m", "visiona", *command[1:], *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        headers = {"Authorization": f"Bearer {_token_of(config_home)}"}
        device_id = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            items = httpx.get(f"{server}/api/v1/devices", headers=headers).json()["items"]
            online = [d for d in items if d["remote_status"] == "online"]
            if online:
                device_id = online[0]["id"]
                break
            time.sleep(0.2)
        assert device_id is not None, "the agent did not come online"

        # this agent has no deploy hook: the model is stored, and the CLI says so
        deployed = run("devices", "deploy", device_id[:8], "det")  # id prefix, model name
        assert deployed.exit_code == 0, deployed.output
        stored = models_dir / f"{model_id}.nef"
        assert deployed.stdout.startswith(
            f"stored det on {device_id}: stored at {stored} on the PC; no deploy hook configured"
        ), deployed.stdout
        assert "deployed" not in deployed.stdout
        assert stored.read_bytes() == content

        listed = run("deployments", "list", device_id, "--json")
        records = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(r["model_id"], r["status"]) for r in records] == [(model_id, "stored")]
        assert records[0]["error"] is None
        assert records[0]["detail"].endswith("on the PC; no deploy hook configured")
        table = run("deployments", "list", device_id).stdout
        assert "stored" in table
        assert "succeeded" not in table
        assert "│ det " in table  # the model column names it (its id is only in the path)
    finally:
        agent.terminate()
        agent.wait(timeout=30)

    # the agent is gone: the deployment fails, one line, non-zero exit
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = json.loads(run("devices", "show", device_id, "--json").stdout)
        if shown["remote_status"] != "online":
            break
        time.sleep(0.2)
    failed = run("devices", "deploy", device_id, model_id)
    assert failed.exit_code == 1
    assert len(failed.stderr.strip().splitlines()) == 1
    assert "device_offline" in failed.stderr


# -- names, prefixes, usage lines, password from stdin, fast help (issue 21) -----------


def _visiona(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script's code path (``python -m visiona``)."""
    return subprocess.run(
        [sys.executable, "-m", "visiona", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["devices", "deploy"], "Usage: visiona devices deploy [OPTIONS] DEVICE MODEL"),
        (["models", "upload"], "Usage: visiona models upload [OPTIONS] FILE"),
        (["devices", "show"], "Usage: visiona devices show [OPTIONS] DEVICE"),
    ],
)
def test_usage_lines_are_plain(args: list[str], usage: str) -> None:
    shown = _visiona(*args, "--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == usage
    assert "{" not in shown.stdout


def test_login_help_does_not_mark_email_required() -> None:
    shown = _visiona("login", "--help")
    assert "required" not in shown.stdout
    assert "--password-stdin" in shown.stdout


def test_a_subcommand_help_loads_no_pydantic() -> None:
    """What made `visiona devices list --help` slow (typer's per-parameter adapters)."""
    shown = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "visiona", "devices", "list", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.startswith("Usage: visiona devices list")
    assert "pydantic" not in shown.stderr


def test_a_server_that_is_not_a_url_says_so() -> None:
    shown = _visiona("login", "--server", "notaurl", "--email", "a@example.com")
    assert shown.returncode == 1
    assert shown.stderr.strip() == (
        "error: --server 'notaurl' is not a URL: give http://HOST:PORT or https://HOST"
    )


def test_password_stdin_signs_in_without_a_warning(
    server: str,
    tmp_path: Path,
) -> None:
    email = f"stdin-{uuid.uuid4().hex[:8]}@example.com"
    created = httpx.post(
        f"{server}/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "name": "Stdin"},
    )
    assert created.status_code == 201
    env_home = {"XDG_CONFIG_HOME": str(tmp_path)}
    shown = subprocess.run(
        [sys.executable, "-m", "visiona", "login", "--server", server, "--email", email,
         "--password-stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env_home},
        timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "Warning" not in shown.stderr
    assert shown.stdout.startswith(f"logged in to {server} as {email}")


def _device(server: str, token: str, name: str) -> str:
    created = httpx.post(
        f"{server}/api/v1/devices",
        headers={"Authorization": f"Bearer {token}"},
        json={"name": name, "device_type": "kl520", "serial_number": uuid.uuid4().hex},
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_devices_are_named_by_id_prefix_or_name_and_ambiguity_is_explained(
    server: str,
    account: str,
    config_home: Path,
) -> None:
    assert login(server, account).exit_code == 0
    token = _token_of(config_home)
    lab = _device(server, token, "Lab PC")
    twins = [_device(server, token, "Twin"), _device(server, token, "Twin")]

    by_name = run("devices", "show", "Lab PC", "--json")
    assert by_name.exit_code == 0, by_name.output
    assert f'"id": "{lab}"' in by_name.stdout
    assert f'"id": "{lab}"' in run("devices", "show", "lab pc", "--json").stdout
    by_prefix = run("devices", "show", lab[:8], "--json")
    assert f'"id": "{lab}"' in by_prefix.stdout

    ambiguous = run("devices", "show", "Twin")
    assert ambiguous.exit_code == 1
    assert ambiguous.stderr.startswith("error: ambiguous: 'Twin' matches 2 devices: ")
    assert all(twin in ambiguous.stderr for twin in twins)
    missing = run("devices", "show", "No such PC")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (
        "error: no device named 'No such PC' or with an id starting with it"
    )
    renamed = run("devices", "rename", lab[:8], "Lab PC (bench)")
    assert renamed.exit_code == 0, renamed.output
    assert renamed.stdout.strip() == f"renamed {lab} to Lab PC (bench)"


def test_enroll_keys_create_list_revoke(server: str, account: str, config_home: Path) -> None:
    assert login(server, account).exit_code == 0
    created = run(
        "enroll-keys", "create", "warehouse", "--max-uses", "3", "-t", "site=wh", "--json"
    )
    assert created.exit_code == 0, created.output
    body = json.loads(created.stdout)
    assert body["key"].startswith("vek_")
    assert f"--enroll-key {body['key']}" in body["agent_command"]
    enrolled = httpx.post(
        f"{server}/api/v1/agent/enroll",
        json={"enrollment_key": body["key"], "serial_number": "SN-E1", "device_type": "kl520"},
    )
    assert enrolled.status_code == 201, enrolled.text
    listed = run("enroll-keys", "list")
    assert listed.exit_code == 0, listed.output
    assert "1/3" in listed.stdout
    assert "site=wh" in listed.stdout
    assert body["key"] not in listed.stdout
    revoked = run("enroll-keys", "revoke", body["id"], "--json")
    assert revoked.exit_code == 0, revoked.output
    as_json = run("enroll-keys", "list", "--json")
    assert json.loads(as_json.stdout.splitlines()[0])["revoked_at"] is not None
    assert run("enroll-keys", "create", "bad", "-t", "nokey").exit_code == 1


def test_rollouts_create_watch_show_and_cancel(
    server: str, account: str, config_home: Path
) -> None:
    assert login(server, account).exit_code == 0
    headers = {"Authorization": f"Bearer {_token_of(config_home)}"}
    for name in ("roll-a", "roll-b"):
        created = httpx.post(
            f"{server}/api/v1/devices",
            json={"name": name, "device_type": "kl720", "serial_number": f"SN-{name}"},
            headers=headers,
        )
        assert created.status_code == 201, created.text
    uploaded = run("models", "upload", str(_model_file(config_home)), "--chip", "kl720")
    assert uploaded.exit_code == 0, uploaded.output
    model_id = uploaded.stdout.split()[1]
    made = run(
        "rollouts", "create", "--model", model_id, "--device", "roll-a", "--device", "roll-b",
        "--canary", "1", "--batch", "50%", "--max-failures", "10%", "--json",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    rollout = json.loads(made.stdout)
    assert rollout["devices"] == 2
    assert rollout["max_failure_percent"] == 10
    shown = run("rollouts", "show", rollout["id"])
    assert shown.exit_code == 0, shown.output
    assert "running" in shown.stdout
    listed = run("rollouts", "list", "--json")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [rollout["id"]]
    cancelled = run("rollouts", "cancel", rollout["id"], "--json")
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    devices = run("rollouts", "devices", rollout["id"], "--state", "cancelled")
    assert devices.stdout.endswith("2 device(s)\n"), devices.output
    watched = run("rollouts", "show", rollout["id"], "--watch")
    assert watched.exit_code == 0, watched.output  # not running: returns at once
    again = run("rollouts", "cancel", rollout["id"])
    assert again.exit_code == 1
    assert "rollout_state" in again.stderr
    assert run("rollouts", "create", "--model", model_id).exit_code == 1  # no target


def _model_file(home: Path) -> Path:
    path = home.parent / "model.nef"
    path.write_bytes(nef(4096, seed=11))
    return path
