"""docs/api-spec.md's audit event table lists exactly the catalogue: actions, targets, detail."""

from __future__ import annotations

import re
from pathlib import Path

from visiona.audit.catalogue import ACTIONS

ROOT = Path(__file__).resolve().parents[2]
_TICKED = re.compile(r"`([a-z_]+)`")


def _documented() -> dict[str, tuple[str, set[str]]]:
    text = (ROOT / "docs" / "api-spec.md").read_text(encoding="utf-8")
    table = text.split("<!-- audit-catalogue:start -->", 1)[1].split(
        "<!-- audit-catalogue:end -->"
    )[0]
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in table.strip().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        action = cells[0].strip("`")
        rows[action] = (cells[1], set(_TICKED.findall(cells[3])))
    return rows


def test_the_documented_table_is_the_catalogue() -> None:
    documented = _documented()
    assert set(documented) == set(ACTIONS)
    for name, action in ACTIONS.items():
        target, detail = documented[name]
        assert target == action.target_type, name
        assert detail == set(action.detail), name
