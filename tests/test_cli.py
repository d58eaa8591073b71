"""The `visiona` command: serve with embedded defaults, fail-fast start-up, migrations."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from testkit.servers import PostgresServer, free_port
from tests.support.api import PASSWORD

VISIONA = [sys.executable, "-m", "visiona"]
CONNECT_TIMEOUT = 2
# Only a safety net against a hung process, not a timing assertion: "fails fast" means
# the command exits with an error instead of waiting forever. Interpreter start-up and
# imports come on top of the connect timeout, and on this shared 2-core machine under a
# full test run they alone have taken well over 15 s.
FAIL_FAST_TIMEOUT = 120


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONA_")}
    env.update(extra)
    return env


def _run(
    args: list[str], cwd: Path, timeout: float, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VISIONA, *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def _serve(cwd: Path) -> Iterator[str]:
    """`visiona serve --port 0` with no configuration at all, in ``cwd``; its base URL."""
    proc = subprocess.Popen(
        [*VISIONA, "serve", "--port", "0"],
        cwd=cwd,
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    base = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and base is None:
        line = proc.stderr.readline()
        if not line:
            break
        match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
        if match:
            base = match.group(1)
    # keep reading what it logs, so a full pipe never blocks the server
    drain = threading.Thread(target=proc.stderr.read, daemon=True)
    drain.start()
    try:
        assert base is not None, "server did not start"
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        drain.join(timeout=20)
        proc.stderr.close()  # the pipe's file object, or a ResourceWarning (an error here)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[str]:
    """`visiona serve --port 0` with no configuration at all, in an empty directory."""
    with _serve(tmp_path) as base:
        yield base


def test_web_sessions_survive_a_restart_of_the_embedded_server(tmp_path: Path) -> None:
    # Issue 11, item 3: no Redis configured, sessions live in the SQLite file.
    body = {"email": "restart@example.com", "password": PASSWORD}
    with _serve(tmp_path) as first:
        created = httpx.post(
            f"{first}/api/v1/auth/register", json={**body, "name": "R"}, timeout=30
        )
        assert created.status_code == 201
        login = httpx.post(f"{first}/api/v1/auth/login", json=body, timeout=30)
        assert login.status_code == 200, login.text
        token = login.json()["token"]
        cookie = login.cookies["visiona_session"]
        other = httpx.post(f"{first}/api/v1/auth/login", json=body, timeout=30).json()["token"]
        out = httpx.post(f"{first}/api/v1/auth/logout", headers=_bearer(other), timeout=30)
        assert out.status_code == 204
    with _serve(tmp_path) as second:  # a new process on the same database file
        me = httpx.get(f"{second}/api/v1/auth/me", headers=_bearer(token), timeout=30)
        assert me.status_code == 200, me.text
        assert me.json()["email"] == body["email"]
        page = httpx.get(
            f"{second}/api/v1/auth/me", cookies={"visiona_session": cookie}, timeout=30
        )
        assert page.status_code == 200
        signed_out = httpx.get(f"{second}/api/v1/auth/me", headers=_bearer(other), timeout=30)
        assert signed_out.status_code == 401  # the logout before the restart held


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_serve_with_no_configuration_is_healthy(serving: str, tmp_path: Path) -> None:
    response = httpx.get(f"{serving}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert (tmp_path / ".visiona" / "visiona.db").exists()


def test_serve_fails_fast_on_unreachable_postgres(tmp_path: Path) -> None:
    port = free_port()
    result = _run(
        ["serve"],
        tmp_path,
        FAIL_FAST_TIMEOUT,
        VISIONA_DATABASE_URL=f"postgresql://alice:hunter2@127.0.0.1:{port}/fleet",
        VISIONA_DB_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert f"127.0.0.1:{port}/fleet" in lines[0]
    assert "hunter2" not in result.stderr + result.stdout
    assert "alice" not in result.stderr + result.stdout


def test_serve_fails_fast_on_unreachable_redis(tmp_path: Path) -> None:
    port = free_port()
    result = _run(
        ["serve"],
        tmp_path,
        FAIL_FAST_TIMEOUT,
        VISIONA_REDIS_URL=f"redis://:pw123secret@127.0.0.1:{port}/0",
        VISIONA_REDIS_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
    )
    assert result.returncode != 0
    assert f"127.0.0.1:{port}/0" in result.stderr
    assert "pw123secret" not in result.stderr + result.stdout


def test_serve_refuses_postgres_with_pending_migrations(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.create_database(f"pending_{uuid.uuid4().hex[:8]}")
    result = _run(["serve"], tmp_path, 60, VISIONA_DATABASE_URL=url)
    assert result.returncode != 0
    assert "visiona migrate up" in result.stderr
    assert "pending" in result.stderr


def test_migrate_commands_on_postgres(tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database(f"cli_{uuid.uuid4().hex[:8]}")
    status = _run(["migrate", "status"], tmp_path, 60, VISIONA_DATABASE_URL=url)
    assert status.returncode == 0, status.stderr
    assert "pending:  0001" in status.stdout
    assert _run(["migrate", "up"], tmp_path, 60, VISIONA_DATABASE_URL=url).returncode == 0
    status = _run(["migrate", "status"], tmp_path, 60, VISIONA_DATABASE_URL=url)
    assert "pending:  none" in status.stdout
    down = _run(["migrate", "down", "--to", "base"], tmp_path, 60, VISIONA_DATABASE_URL=url)
    assert down.returncode == 0, down.stderr
    status = _run(["migrate", "status"], tmp_path, 60, VISIONA_DATABASE_URL=url)
    assert "current:  base" in status.stdout


def test_invalid_configuration_is_one_clear_error_without_the_value(tmp_path: Path) -> None:
    result = _run(
        ["migrate", "status"], tmp_path, 60, VISIONA_DATABASE_URL="mysql://u:topsecret@h/db"
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid configuration: VISIONA_DATABASE_URL")
    assert "topsecret" not in result.stderr


# -- start-up, help text, user errors (issue 11, item 2) ------------------------------

SERVER_STACK = ("alembic", "sqlalchemy", "fastapi", "uvicorn")


def _loaded_after(args: list[str], cwd: Path, packages: tuple[str, ...]) -> list[str]:
    """Run the console script's entry point with ``args``; the ``packages`` it imported."""
    probe = (
        "import sys\n"
        "sys.argv = ['visiona', *sys.argv[1:]]\n"
        "from visiona.entry import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({packages!r}))\n"
        "print('LOADED', loaded, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"^LOADED (\[.*\])$", result.stderr, re.MULTILINE)
    assert match is not None, (args, result.stderr)
    return [name.strip("' ") for name in match.group(1).strip("[]").split(",") if name.strip()]


def test_client_and_agent_help_do_not_import_the_server_stack(tmp_path: Path) -> None:
    for args in (
        ["devices", "list", "--help"],
        ["--help"],
        ["--version"],
        ["agent", "--help"],
        ["forward", "--help"],
    ):
        assert _loaded_after(args, tmp_path, SERVER_STACK) == [], args


def test_version_loads_neither_typer_nor_pydantic(tmp_path: Path) -> None:
    assert _loaded_after(["--version"], tmp_path, ("typer", "click", "pydantic")) == []


def test_help_still_loads_the_command_line(tmp_path: Path) -> None:
    # The probe sees what the command imports: typer is there for everything but --version.
    assert _loaded_after(["--help"], tmp_path, ("typer",)) == ["typer"]


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    from visiona import __version__  # noqa: PLC0415 - the value under test

    result = _run(["--version"], tmp_path, 60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"visiona {__version__}"


def test_help_shows_no_python_type_names(tmp_path: Path) -> None:
    for args in (
        ["--help"],
        ["models", "upload", "--help"],
        ["models", "list", "--help"],
        ["devices", "list", "--help"],
        ["agent", "--help"],
        ["migrate", "up", "--help"],
    ):
        result = _run(args, tmp_path, 60)
        assert result.returncode == 0, result.stderr
        for name in ("<bool>", "<str>", "<list[str]>", "<int>", "<path>"):
            assert name not in result.stdout, (args, name, result.stdout)
    upload = _run(["models", "upload", "--help"], tmp_path, 60).stdout
    assert "--label LABEL" in upload
    assert "kl520|kl530" in upload


def test_migrate_to_an_unknown_revision_is_one_line_exit_2(tmp_path: Path) -> None:
    result = _run(["migrate", "up", "--to", "bogus"], tmp_path, 60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]]
    assert "cannot migrate to 'bogus'" in errors[0]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_migrate_and_seed_demo_keep_alembic_quiet_unless_verbose(tmp_path: Path) -> None:
    quiet = _run(["migrate", "up"], tmp_path, 60)
    assert quiet.returncode == 0, quiet.stderr
    assert "alembic" not in quiet.stderr
    assert "Running upgrade" not in quiet.stderr
    down = _run(["migrate", "down", "--to", "base", "-v"], tmp_path, 60)
    assert down.returncode == 0, down.stderr
    assert "Running downgrade" in down.stderr
    seeded = _run(["seed-demo"], tmp_path, 90)
    assert seeded.returncode == 0, seeded.stderr
    assert "Running upgrade" not in seeded.stderr
    assert "alembic" not in seeded.stderr


def test_serve_on_a_busy_port_fails_before_it_says_ready(tmp_path: Path) -> None:
    import socket  # noqa: PLC0415 - only this test holds a port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(["serve", "--port", str(port)], tmp_path, 60)
    assert result.returncode == 1
    assert " ready: " not in result.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_run_installs_without_the_dev_group_and_make_test_with_it() -> None:
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        ["make", "-n", "-B", "run"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    syncs = [line for line in run.splitlines() if " sync " in line]
    assert syncs, run
    assert all("--no-dev" in line for line in syncs), syncs
    test = subprocess.run(
        ["make", "-n", "-B", "test"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    syncs = [line for line in test.splitlines() if " sync " in line]
    assert any("--no-dev" not in line for line in syncs), syncs
    assert test.index("--no-dev") < test.index("pytest")
