"""The agent runs on the user's machine: it must never import server code.

Each entry point of the agent is run in a fresh interpreter, which lists ``sys.modules``
when it exits: importing the library (:mod:`visiona.agent.main`), the ``visiona agent``
command line (its help, its subcommands, and a real run stopped by SIGTERM).

The agent may import :mod:`visiona.agent`, :mod:`visiona.yamux`, the shared wire
constants (:mod:`visiona.wire`) and :mod:`visiona.malloc`; reached through the
``visiona`` command, also the command line itself (:mod:`visiona.entry`,
:mod:`visiona.cli`) and the API client (:mod:`visiona.client`). Anything else of the
package (``visiona.kit``, ``visiona.app``, the server's features) or a server library
(FastAPI, SQLAlchemy, Redis, ...) is a regression.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_AGENT = ("visiona.agent", "visiona.yamux", "visiona.wire", "visiona.malloc")
_COMMAND_LINE = (*_AGENT, "visiona.entry", "visiona.cli", "visiona.client")
#: Libraries only the server uses: loading one means server code came along.
_SERVER_LIBRARIES = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "alembic",
    "asyncpg",
    "aiosqlite",
    "redis",
    "pydantic_settings",
    "uvicorn",
    "jinja2",
    "obstore",
    "prometheus_client",
    "argon2",
    "multipart",
    "python_multipart",
)

#: Runs the ``visiona`` command (argv from the environment) and writes the names in
#: sys.modules to the file in VISIONA_TEST_MODULES when the interpreter exits.
_PROBE = """\
import atexit, json, os, sys
def _dump():
    with open(os.environ["VISIONA_TEST_MODULES"], "w") as out:
        json.dump(sorted(sys.modules), out)
atexit.register(_dump)
mode, target = sys.argv[1], sys.argv[2]
if mode == "import":
    __import__(target)
else:
    sys.argv = ["visiona", *sys.argv[2:]]
    from visiona.entry import main
    main()
"""


@contextmanager
def _silent_port() -> Iterator[int]:
    """A loopback port nobody listens on: bound (port 0) but never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


def _offenders(loaded: list[str], allowed: tuple[str, ...]) -> list[str]:
    def ours_allowed(name: str) -> bool:
        return name == "visiona" or any(
            name == prefix or name.startswith(f"{prefix}.") for prefix in allowed
        )

    return [
        name
        for name in loaded
        if (name.split(".")[0] == "visiona" and not ours_allowed(name))
        or name.split(".")[0] in _SERVER_LIBRARIES
    ]


def _probe(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "VISIONA_TEST_MODULES": str(tmp_path / "modules.json")}
    return subprocess.Popen(
        [sys.executable, "-c", _PROBE, *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _loaded(tmp_path: Path) -> list[str]:
    loaded: list[str] = json.loads((tmp_path / "modules.json").read_text())
    return loaded


def _run(tmp_path: Path, *args: str) -> tuple[list[str], int]:
    proc = _probe(tmp_path, *args)
    proc.communicate(timeout=60)
    return _loaded(tmp_path), proc.returncode


def test_the_agent_library_imports_no_server_code(tmp_path: Path) -> None:
    loaded, code = _run(tmp_path, "import", "visiona.agent.main")
    assert code == 0
    assert "visiona.agent.runner" in loaded  # the probe really imported the agent
    assert "visiona.wire" in loaded
    assert _offenders(loaded, _AGENT) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["agent", "--help"],
        ["agent", "status", "--session-file", "missing.json"],
        ["agent", "install-service", "--forward", "127.0.0.1:1", "--session-file", "none.json"],
    ],
    ids=["help", "status", "install-service"],
)
def test_the_agent_command_line_imports_no_server_code(tmp_path: Path, argv: list[str]) -> None:
    loaded, code = _run(tmp_path, "run", *argv)
    assert code in (0, 1)  # help, or "no agent session": both after the command's imports
    assert "visiona.agent.cli" in loaded
    assert _offenders(loaded, _COMMAND_LINE) == []


def test_a_running_agent_imports_no_server_code(tmp_path: Path) -> None:
    # A real run: nothing listens on the server's port, so the agent keeps retrying its
    # pairing; once it says so, it is stopped the way a service manager stops it.
    with _silent_port() as port:
        proc = _probe(
            tmp_path,
            "run",
            "agent",
            "--server",
            f"http://127.0.0.1:{port}",
            "--forward",
            "127.0.0.1:1",
            "--token",
            "vpt_unused",
            "--session-file",
            str(tmp_path / "session.json"),
        )
        assert proc.stderr is not None
        try:
            for line in proc.stderr:  # bounded by the test's timeout
                if "pairing" in line:  # its first pairing attempt failed
                    break
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        finally:
            proc.kill()
    loaded = _loaded(tmp_path)
    assert "visiona.agent.runner" in loaded
    assert _offenders(loaded, _COMMAND_LINE) == []


def test_the_wire_module_is_a_leaf(tmp_path: Path) -> None:
    loaded, code = _run(tmp_path, "import", "visiona.wire")
    assert code == 0
    assert [name for name in loaded if name.startswith("visiona")] == ["visiona", "visiona.wire"]
