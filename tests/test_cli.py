"""The `visiona` command: serve with embedded defaults, fail-fast start-up, migrations."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.servers import PostgresServer, free_port

VISIONA = [sys.executable, "-m", "visiona"]
CONNECT_TIMEOUT = 2
# Interpreter start-up and imports come on top of the connect timeout on a busy machine.
STARTUP_ALLOWANCE = 15


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


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[str]:
    """`visiona serve --port 0` with no configuration at all, in an empty directory."""
    proc = subprocess.Popen(
        [*VISIONA, "serve", "--port", "0"],
        cwd=tmp_path,
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
    try:
        assert base is not None, "server did not start"
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


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
        CONNECT_TIMEOUT + 1 + STARTUP_ALLOWANCE,
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
        CONNECT_TIMEOUT + 1 + STARTUP_ALLOWANCE,
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
