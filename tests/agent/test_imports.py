"""The agent runs on the user's machine: it must never import server code.

It may import :mod:`visiona.agent`, :mod:`visiona.yamux`, the shared wire constants
(:mod:`visiona.wire`) and :mod:`visiona.malloc`; anything else of the package (the
server's features, ``visiona.kit``: SQLAlchemy, FastAPI, settings) is a regression.
"""

from __future__ import annotations

import json
import subprocess
import sys

_ALLOWED = ("visiona", "visiona.agent", "visiona.yamux", "visiona.wire", "visiona.malloc")


def _loaded_by(module: str) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('visiona', 'sqlalchemy', 'fastapi', 'starlette', 'alembic', 'pydantic_settings'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def _is_allowed(name: str) -> bool:
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in _ALLOWED[1:]) or (
        name == "visiona"
    )


def test_the_agent_imports_no_server_code() -> None:
    loaded = _loaded_by("visiona.agent.main")
    assert "visiona.agent.runner" in loaded  # the probe really imported the agent
    assert "visiona.wire" in loaded
    assert [name for name in loaded if not _is_allowed(name)] == []


def test_the_wire_module_is_a_leaf() -> None:
    loaded = _loaded_by("visiona.wire")
    assert [name for name in loaded if name not in ("visiona", "visiona.wire")] == []
