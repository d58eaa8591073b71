"""Render the README's configuration table from :class:`Settings` (one source of truth).

``python -m visiona.kit.configdoc`` rewrites the table between the markers in
README.md; a test fails when the README and the settings disagree.

The defaults shown are the values a ``Settings`` gets when nothing is configured
(defaults and default factories, validated), read without the environment or a
``.env`` file, so the table does not depend on who renders it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from visiona.kit.settings import Settings

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"


class _Unconfigured(Settings):
    """``Settings`` that read nothing but their own defaults (no environment, no file)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the keyword arguments: the defaults are what is left."""
        del settings_cls, env_settings, dotenv_settings, file_secret_settings
        return (init_settings,)


def defaults() -> Settings:
    """The settings a server runs with when nothing is configured."""
    return _Unconfigured()


def render_value(value: object) -> str:
    """One setting's value as the table shows it (JSON for lists and objects, as set)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    if value == "":
        return "empty"
    return f"`{value}`"


def config_table() -> str:
    """The Markdown table of every setting: variable, default, meaning."""
    unconfigured = defaults()
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        default = render_value(getattr(unconfigured, name))
        rows.append(f"| `VISIONA_{name.upper()}` | {default} | {desc} |")
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
