"""Session checks of a connect storm: concurrent checks share statements, answers unchanged."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.api import signup
from tests.support.devices import API, paired_device, runtime
from visiona.kit.clock import utcnow
from visiona.kit.errors import DatabaseUnavailableError
from visiona.kit.tokens import hash_token
from visiona.tokens import repository
from visiona.tokens.batch import SessionChecks


async def _tokens(client: httpx.AsyncClient) -> tuple[list[str], list[str]]:
    """Five holding session tokens' hashes and three that do not (revoked, unpaired, unknown)."""
    user = await signup(client)
    good = [hash_token((await paired_device(client, user))["session_token"]) for _ in range(5)]
    revoked = await paired_device(client, user)
    response = await client.delete(
        f"{API}/session-tokens/{revoked['session_token_id']}", headers=user.headers
    )
    assert response.status_code == 204
    unpaired = await paired_device(client, user)
    response = await client.delete(f"{API}/devices/{unpaired['device_id']}", headers=user.headers)
    assert response.status_code == 204
    bad = [
        hash_token(revoked["session_token"]),
        hash_token(unpaired["session_token"]),
        hash_token("vst_never-issued"),
    ]
    return good, bad


async def test_concurrent_checks_answer_as_single_reads_and_share_statements_on_postgres(
    client: httpx.AsyncClient, app: FastAPI, backend: str
) -> None:
    good, bad = await _tokens(client)
    db = runtime(app).db
    checks = SessionChecks(db)
    asked = (good + bad) * 3  # the same token twice in a batch gets the same answer
    answers = await asyncio.gather(*(checks.find(h) for h in asked))
    single = [await repository.find_valid_session(db, h, utcnow()) for h in asked]
    assert answers == single
    assert [a is not None for a in answers[:8]] == [True] * 5 + [False] * 3
    assert checks.checked == len(asked)
    if backend == "postgres":
        assert checks.statements < len(asked) / 4  # batched: a few statements for 24 checks
    else:
        assert checks.statements == len(asked)  # SQLite: each its own read


async def test_a_failing_batch_fails_each_waiting_check_and_the_next_batch_runs(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, _ = await _tokens(client)
    checks = SessionChecks(runtime(app).db)
    # the database is away for the first statement (a batch on PostgreSQL; on SQLite
    # the first single read, so only one check fails there)
    failures = [DatabaseUnavailableError()]
    for name in ("find_valid_sessions", "find_valid_session"):
        real = getattr(repository, name)

        async def once_down(*args: Any, _real: Any = real) -> Any:
            if failures:
                raise failures.pop()
            return await _real(*args)

        monkeypatch.setattr(repository, name, once_down)
    results = await asyncio.gather(*(checks.find(h) for h in good), return_exceptions=True)
    failed = [r for r in results if isinstance(r, DatabaseUnavailableError)]
    assert len(failed) == (len(good) if checks.statements == 1 else 1)
    assert all(r is None or isinstance(r, (repository.ValidSession, Exception)) for r in results)
    again = await asyncio.gather(*(checks.find(h) for h in good))
    assert all(session is not None for session in again)


async def test_a_check_whose_caller_went_away_does_not_disturb_the_others(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    good, _ = await _tokens(client)
    checks = SessionChecks(runtime(app).db)
    gone = asyncio.create_task(checks.find(good[0]))
    staying = [asyncio.create_task(checks.find(h)) for h in good[1:]]
    await asyncio.sleep(0)
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    assert all(session is not None for session in await asyncio.gather(*staying))
