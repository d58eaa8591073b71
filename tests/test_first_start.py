"""A newcomer's first start: `make run` honours the port they ask for, either way."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from testkit.nodes import node_env, wait_node
from testkit.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def _run_line(*make_args: str, env: dict[str, str] | None = None) -> list[str]:
    """The `visiona serve` command `make run` would run (dry run: nothing installed)."""
    done = subprocess.run(
        ["make", "-n", "--always-make", "--no-print-directory", "run", *make_args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    [line] = [line for line in done.stdout.splitlines() if " serve" in line]
    return shlex.split(line)


def test_make_run_passes_no_port_of_its_own() -> None:
    assert _run_line(env={"VISIONA_PORT": "18080"}) == [".venv/bin/visiona", "serve"]


def test_make_run_port_is_passed_on() -> None:
    assert _run_line("PORT=18080", "HOST=127.0.0.2")[1:] == [
        "serve",
        "--host",
        "127.0.0.2",
        "--port",
        "18080",
    ]


@pytest.mark.parametrize("how", ["VISIONA_PORT", "make PORT="])
def test_the_server_make_run_starts_listens_on_the_port_asked_for(how: str, tmp_path: Path) -> None:
    port = free_port()
    env = node_env(data_dir=str(tmp_path / "data"))
    if how == "VISIONA_PORT":
        env["VISIONA_PORT"] = str(port)
        argv = _run_line(env={"VISIONA_PORT": str(port)})
    else:
        argv = _run_line(f"PORT={port}")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ROOT / argv[0]), *argv[1:]], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        node = wait_node(("first", proc, log), timeout=60)
        assert node.port == port
    finally:
        proc.terminate()
        proc.wait(timeout=20)
