"""Cluster configuration: refused at start-up in one line, never echoing the token."""

from __future__ import annotations

import subprocess
import sys

from testkit.nodes import node_env


def _serve(**settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visiona", "serve"],
        env=node_env(**settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_node_url_without_redis_is_a_one_line_configuration_error() -> None:
    result = _serve(node_url="http://127.0.0.1:9", internal_token="x" * 32)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: invalid configuration: VISIONA_NODE_URL and VISIONA_INTERNAL_TOKEN need "
        "VISIONA_REDIS_URL (a cluster keeps its tunnel registry in Redis)"
    ]
    assert "x" * 32 not in result.stderr


def test_a_short_internal_token_is_refused_without_echoing_it() -> None:
    result = _serve(redis_url="redis://127.0.0.1:9/0", internal_token="short-secret")
    assert result.returncode == 2
    assert "VISIONA_INTERNAL_TOKEN must be at least 16 characters" in result.stderr
    assert "short-secret" not in result.stderr
