"""The README's pairing walkthrough works when pasted line by line (issue 11, item 4)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.live import serve_in_thread
from tests.support.settings import make_settings
from visiona.app import create_app
from visiona.kit import migrate

README = Path(__file__).resolve().parents[1] / "README.md"
DEFAULT = "http://127.0.0.1:8080"


def _sh_blocks(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", body, re.S)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A fresh live server (SQLite)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'v.db'}"
    migrate.upgrade(url)
    with serve_in_thread(create_app(make_settings(database_url=url, data_dir=tmp_path))) as live:
        yield live.url


def test_the_curl_walkthrough_then_the_agent_step_pair_two_devices(
    server: str, tmp_path: Path
) -> None:
    curl = next(block for block in _sh_blocks("Pairing a device") if "curl" in block)
    script = (
        "set -euo pipefail\n" + curl.replace(DEFAULT, server) + 'echo\necho "P2=$P2"\necho "T=$T"\n'
    )
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert '"device_id"' in done.stdout  # the curl pairing worked
    values = dict(re.findall(r"^(P2|T)=(\S+)$", done.stdout, re.M))
    assert values["P2"].startswith("vpt_")

    # the agent step, with the options the README shows as required
    agent_line = _sh_blocks("Running the agent")[0].splitlines()[0].rstrip(" \\")
    assert '--token "$P2"' in agent_line
    argv = agent_line.replace(DEFAULT, server).replace('"$P2"', values["P2"]).split()
    env = {**os.environ, "HOME": str(tmp_path)}  # the default session file goes there
    agent = subprocess.Popen(
        [sys.executable, "-m", "visiona", *argv[1:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        headers = {"Authorization": f"Bearer {values['T']}"}

        items: list[dict[str, str]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and agent.poll() is None:
            items = httpx.get(f"{server}/api/v1/devices", headers=headers, timeout=30).json()[
                "items"
            ]
            if any(d["remote_status"] == "online" for d in items):
                break
            time.sleep(0.2)
        assert [d["remote_status"] for d in items].count("online") == 1, items
        assert len(items) == 2  # the curl-paired device and the agent's
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0, stderr
    assert (tmp_path / ".config" / "visiona" / "agent-session.json").exists()
