"""Demo data: `visiona seed-demo` and VISIONA_SEED_DEMO_DATA at `serve`, idempotent."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
import typer
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select
from typer.testing import CliRunner

from tests.support.api import error_code
from tests.support.devices import API, pair
from tests.support.settings import LIFESPAN_TIMEOUT
from visiona import cli
from visiona.app import create_app
from visiona.demo import seed as demo
from visiona.kit import logs
from visiona.kit.database import Database
from visiona.kit.schema import devices, models, pairing_tokens, users
from visiona.kit.settings import Settings


async def _counts(settings: Settings) -> dict[str, int]:
    db = Database(settings.build_engine(), settings.database_target)
    try:
        async with db.transaction() as conn:

            async def count(table: Any, *where: Any) -> int:
                return int(
                    (
                        await conn.execute(select(func.count()).select_from(table).where(*where))
                    ).scalar_one()
                )

            return {
                "users": await count(users, users.c.id == demo.DEMO_USER_ID),
                "devices": await count(
                    devices,
                    devices.c.owner_user_id == demo.DEMO_USER_ID,
                    devices.c.deleted_at.is_(None),
                ),
                "models": await count(models, models.c.owner_user_id == demo.DEMO_USER_ID),
                "pairing_tokens": await count(
                    pairing_tokens, pairing_tokens.c.user_id == demo.DEMO_USER_ID
                ),
            }
    finally:
        await db.dispose()


async def test_seed_demo_twice_leaves_one_of_each(fresh_settings: Settings) -> None:
    first = await demo.run_seed_demo(fresh_settings)
    second = await demo.run_seed_demo(fresh_settings)
    assert first.password is not None
    assert second.password is None
    assert (first.device_created, first.model_created) == (True, True)
    assert (second.device_created, second.model_created) == (False, False)
    assert second.device_id == first.device_id
    assert second.model_id == first.model_id
    assert second.pairing_token != first.pairing_token
    assert await _counts(fresh_settings) == {
        "users": 1,
        "devices": 1,
        "models": 1,
        "pairing_tokens": 2,
    }

    app = create_app(fresh_settings)
    async with LifespanManager(
        app, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
    ):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            login = await client.post(
                f"{API}/auth/login", json={"email": demo.DEMO_EMAIL, "password": first.password}
            )
            assert login.status_code == 200, login.text
            assert login.json()["user"]["id"] == str(demo.DEMO_USER_ID)
            headers = {"Authorization": f"Bearer {login.json()['token']}"}
            listed = (await client.get(f"{API}/devices", headers=headers)).json()["items"]
            assert [(d["serial_number"], d["device_type"]) for d in listed] == [
                (demo.DEMO_SERIAL, "kl520")
            ]
            # the printed token pairs the local agent; the demo serial re-uses the demo device
            paired = await pair(client, first.pairing_token, demo.DEMO_SERIAL)
            assert paired.status_code == 201, paired.text
            assert paired.json()["device_id"] == str(first.device_id)
            assert (await pair(client, second.pairing_token)).status_code == 201
            reused = await pair(client, first.pairing_token)
            assert reused.status_code == 401
            assert error_code(reused) == "unauthorized"


@pytest.fixture
def cli_env(fresh_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The process environment pointing `visiona` at the fresh database."""
    for name in ("VISIONA_REDIS_URL", "VISIONA_SEED_DEMO_DATA"):
        monkeypatch.delenv(name, raising=False)
    assert fresh_settings.database_url is not None
    monkeypatch.setenv("VISIONA_DATABASE_URL", fresh_settings.database_url)
    monkeypatch.setenv("VISIONA_DATA_DIR", str(fresh_settings.data_dir))
    monkeypatch.setenv("VISIONA_LOG_LEVEL", "WARNING")
    # the command installs a handler on the real root logger bound to the runner's
    # captured stderr, which is closed after the run: keep the test's logging intact
    monkeypatch.setattr(logs, "configure_logging", lambda *_args: None)
    return fresh_settings


def test_seed_demo_command_prints_a_warning_and_a_pairing_token(cli_env: Settings) -> None:
    runner = CliRunner()
    first = runner.invoke(cli.app, ["seed-demo"])
    assert first.exit_code == 0, first.output
    assert "DEVELOPMENT ONLY" in first.stderr
    assert "vpt_" in first.stdout
    assert "vpt_" not in first.stderr
    assert "password: " in first.stdout
    assert "unchanged" not in first.stdout
    second = runner.invoke(cli.app, ["seed-demo"])
    assert second.exit_code == 0, second.output
    assert "password: unchanged" in second.stdout
    assert "already there" in second.stdout
    counts = asyncio.run(_counts(cli_env))
    assert counts == {"users": 1, "devices": 1, "models": 1, "pairing_tokens": 2}


def test_serve_seeds_demo_data_only_when_enabled(
    fresh_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.seed_demo_at_startup(fresh_settings)
    assert capsys.readouterr().out == ""
    assert asyncio.run(_counts(fresh_settings))["users"] == 0
    cli.seed_demo_at_startup(fresh_settings.model_copy(update={"seed_demo_data": True}))
    captured = capsys.readouterr()
    assert "vpt_" in captured.out
    assert "DEVELOPMENT ONLY" in captured.err
    assert asyncio.run(_counts(fresh_settings))["devices"] == 1


def test_seed_demo_refuses_when_the_demo_email_belongs_to_someone_else(
    fresh_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async def squat() -> None:
        db = Database(fresh_settings.build_engine(), fresh_settings.database_target)
        try:
            async with db.transaction() as conn:
                await conn.execute(
                    users.insert().values(
                        id=uuid.UUID("00000000-0000-4000-8000-0000000000aa"),
                        email=demo.DEMO_EMAIL.upper(),
                        name="Someone",
                    )
                )
        finally:
            await db.dispose()

    asyncio.run(squat())
    with pytest.raises(typer.Exit):
        cli.seed_demo_at_startup(fresh_settings.model_copy(update={"seed_demo_data": True}))
    assert "demo data not created" in capsys.readouterr().err
    assert asyncio.run(_counts(fresh_settings))["devices"] == 0
