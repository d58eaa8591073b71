"""The unit-of-work rule of docs/database.md, checked on the source.

Endpoints (the edge) open transactions: through ``Conn`` or, for the named exceptions,
with ``runtime.db.transaction()`` under a ``# unit of work:`` comment that says why.
Services and repositories never begin or commit; the one named exception is the
deployment transfer's ``mark``.
"""

from __future__ import annotations

import re
from pathlib import Path

import visiona

_ROOT = Path(visiona.__file__).parent
_OPENS = re.compile(r"\.(transaction|begin|commit|connect)\(")
_NAMED_EXCEPTIONS = {"deployments/service.py": 1}


def _features(name: str) -> list[Path]:
    return sorted(_ROOT.glob(f"*/{name}"))


def test_services_and_repositories_never_open_a_transaction() -> None:
    found: dict[str, int] = {}
    checked = _features("service.py") + _features("repository.py")
    assert len(checked) >= 10  # the probe really looked at the features
    for path in checked:
        hits = len(_OPENS.findall(path.read_text(encoding="utf-8")))
        if hits:
            found[str(path.relative_to(_ROOT))] = hits
    assert found == _NAMED_EXCEPTIONS


def test_every_endpoint_opening_its_own_transaction_says_why() -> None:
    unexplained = []
    opened = 0
    for path in _features("endpoints.py"):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if ".transaction()" in line:
                opened += 1
                if not lines[number - 1].strip().startswith("# unit of work:"):
                    unexplained.append(f"{path.relative_to(_ROOT)}:{number + 1}")
    assert opened > 0
    assert unexplained == []
