"""The scheduler's loop: a turn the database could not serve is a warning, not a traceback."""

from __future__ import annotations

import asyncio
import logging

import pytest
from fastapi import FastAPI

from visiona.kit.errors import DatabaseUnavailableError
from visiona.rollouts.dependencies import SCHEDULER


async def test_a_turn_the_busy_database_could_not_serve_is_a_warning_and_the_next_runs(
    app: FastAPI, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = SCHEDULER.of(app)
    turns: list[int] = []

    async def busy_then_fine(token: int) -> bool:
        turns.append(token)
        if len(turns) == 1:
            raise DatabaseUnavailableError
        return False

    monkeypatch.setattr(scheduler, "turn", busy_then_fine)
    caplog.set_level(logging.WARNING, logger="visiona.rollouts")
    scheduler.wake()
    async with asyncio.timeout(30):
        while len(turns) < 2:
            scheduler.wake()
            await asyncio.sleep(0.05)
    records = [r for r in caplog.records if r.name.startswith("visiona.rollouts")]
    assert [r.getMessage() for r in records] == [
        "rollouts: scheduler turn skipped: the database is busy or away"
    ]
    assert records[0].exc_info is None
