"""Render the README's configuration table from :class:`Settings` (one source of truth).

``python -m visiona.kit.configdoc`` rewrites the table between the markers in
README.md; a test fails when the README and the settings disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from visiona.kit.settings import Settings

START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def config_table() -> str:
    """The Markdown table of every setting: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `VISIONA_{name.upper()}` | {_default(name)} | {desc} |")
    return "\n".join(rows)


def render(readme: str) -> str:
    """``readme`` with the table between the markers replaced."""
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{config_table()}\n{END}{tail}"


def main() -> None:
    """Rewrite README.md in the current directory."""
    path = Path("README.md")
    path.write_text(render(path.read_text()))
    sys.stdout.write("README.md configuration table updated\n")


if __name__ == "__main__":
    main()
