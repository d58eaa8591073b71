"""The import rules of issue 20, checked on the source.

- import-linter's contracts in pyproject.toml (``[tool.importlinter]``): the kit, yamux
  and ``wire.py`` import no feature; yamux imports nothing else of the project; the
  agent imports no server module; the cluster primitive imports none of the features
  that run through it.
- Features use each other through public names only: no ``_private`` module, function
  or attribute of another package is imported or reached into (an AST scan).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import visiona

_PACKAGE = Path(visiona.__file__).parent
_PYPROJECT = _PACKAGE.parent / "pyproject.toml"


def test_the_import_contracts_hold() -> None:
    # In a child interpreter: import-linter imports and configures things (logging among
    # them) that leaked into later tests reading their log records with caplog.
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), str(_PYPROJECT), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=_PYPROJECT.parent,
    )
    report = done.stdout + done.stderr
    assert "Contracts: 4 kept, 0 broken." in report, report  # all four were really checked
    assert done.returncode == 0, report


def _package_of(module: str) -> str:
    """``visiona.tunnel`` for ``visiona.tunnel.hub``; ``visiona.app`` for itself."""
    return ".".join(module.split(".")[:2])


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(_PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_uses(source: str, module: str) -> list[str]:
    """Where ``source`` (the text of ``module``) imports or reaches into a private name of
    another package of the project."""
    own = _package_of(module)
    found: list[str] = []
    foreign: set[str] = set()  # local names bound to another package's modules or objects
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            target = node.module
            if not target.startswith("visiona") or _package_of(target) == own:
                continue
            parts = target.split(".")
            for alias in node.names:
                if any(_private(p) for p in parts) or _private(alias.name):
                    found.append(f"{module}:{node.lineno} from {target} import {alias.name}")
                foreign.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                if not target.startswith("visiona.") or _package_of(target) == own:
                    continue
                if any(_private(p) for p in target.split(".")):
                    found.append(f"{module}:{node.lineno} import {target}")
                if alias.asname:
                    foreign.add(alias.asname)
    found.extend(
        f"{module}:{node.lineno} {node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in foreign
        and _private(node.attr)
    )
    return found


def test_no_package_uses_a_private_name_of_another() -> None:
    sources = sorted(_PACKAGE.rglob("*.py"))
    assert len(sources) > 100  # the scan really read the package
    found = [
        use
        for path in sources
        for use in private_uses(path.read_text(encoding="utf-8"), _module_name(path))
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "from visiona.tunnel.endpoints import _forward_target",
        "from visiona.tunnel._hidden import thing",
        "import visiona.tunnel._hidden",
        "from visiona.tunnel import endpoints\nendpoints._forward_target(1, 2)",
    ],
)
def test_the_scan_catches_each_kind_of_private_use(source: str) -> None:
    assert private_uses(source, "visiona.cluster.endpoints") != []


def test_the_scan_leaves_public_and_own_private_names_alone() -> None:
    source = (
        "from visiona import __version__\n"
        "from visiona.tunnel.target import forward_target\n"
        "from visiona.cluster._own import helper\n"
        "from visiona.cluster import registry\n"
        "registry._parse(b'')\n"
    )
    assert private_uses(source, "visiona.cluster.endpoints") == []
