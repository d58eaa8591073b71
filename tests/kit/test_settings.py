"""Settings: embedded defaults, URL handling, secret-free targets, and the README table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.support.settings import make_settings
from visiona.kit import configdoc
from visiona.kit.settings import Settings


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path)
    assert settings.is_sqlite
    assert settings.database.drivername == "sqlite+aiosqlite"
    assert settings.database.database == f"{tmp_path}/visiona.db"


def test_defaults_match_the_contract() -> None:
    settings = make_settings()
    assert settings.session_idle_ttl == 12 * 3600
    assert settings.session_absolute_ttl == 7 * 24 * 3600
    assert settings.redis_url is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


def test_postgres_url_runs_on_asyncpg_and_target_hides_credentials() -> None:
    settings = make_settings(database_url="postgresql://bob:hunter2@db.internal:6543/visiona")
    assert settings.database.drivername == "postgresql+asyncpg"
    assert settings.database_target == "db.internal:6543/visiona"
    assert "hunter2" not in settings.database_target


def test_redis_target_hides_password() -> None:
    settings = make_settings(redis_url="redis://:s3cret@cache:6380/2")
    assert settings.redis_target == "cache:6380/2"


def test_environment_prefix_and_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("VISIONA_PORT=9999\nVISIONA_LOG_FORMAT=json\n")
    monkeypatch.setenv("VISIONA_SESSION_IDLE_TTL", "60")
    settings = Settings(_env_file=env_file)
    assert settings.port == 9999
    assert settings.log_format == "json"
    assert settings.session_idle_ttl == 60


@pytest.mark.parametrize(
    "bad",
    [
        {"log_level": "LOUD"},
        {"database_url": "mysql://x/y"},
        {"port": 70000},
        {"log_format": "xml"},
    ],
)
def test_invalid_settings_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        make_settings(**bad)


def test_readme_configuration_table_matches_settings() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert configdoc.render(readme) == readme, "run: .venv/bin/python -m visiona.kit.configdoc"


def _readme_defaults() -> dict[str, str]:
    """The README table's default column, by setting name."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.partition(configdoc.START)[2].partition(configdoc.END)[0]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| `VISIONA_")]
    return {row[0].removeprefix("| `VISIONA_").removesuffix("`").lower(): row[1] for row in rows}


def test_readme_defaults_are_what_an_unconfigured_server_runs_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real Settings() with nothing configured: no VISIONA_* variable, no .env file.
    for name in list(os.environ):
        if name.upper().startswith("VISIONA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    unconfigured = Settings()
    shown = _readme_defaults()
    assert set(shown) == set(Settings.model_fields)
    for name, cell in shown.items():
        assert "Undefined" not in cell, f"VISIONA_{name.upper()} shows {cell}"
        assert cell == configdoc.render_value(getattr(unconfigured, name)), name


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "unset"), (False, "false"), ("", "empty"), ([], "`[]`"), ({}, "`{}`"), (8, "`8`")],
)
def test_config_table_renders_values_as_they_are_set(value: object, shown: str) -> None:
    assert configdoc.render_value(value) == shown
