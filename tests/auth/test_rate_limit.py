"""Login attempts are limited per (email, client address), per client address and, with a
generous ceiling, per email; in process and in Redis, on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from tests.support.api import PASSWORD, error_code, signup
from tests.support.settings import LIFESPAN_TIMEOUT
from visiona.app import create_app
from visiona.kit.settings import Settings

LOGIN = "/api/v1/auth/login"
Client = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def strict_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with small limits: 3 per (email, address), 20 per address, 8 per email."""
    strict = settings.model_copy(
        update={
            "login_rate_limit": 3,
            "login_rate_limit_per_address": 20,
            "login_rate_limit_per_email": 8,
            "login_rate_window": 60,
        }
    )
    app = create_app(strict)
    async with LifespanManager(
        app, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
    ):
        yield app


@pytest.fixture
async def client_from(strict_app: FastAPI) -> AsyncIterator[Client]:
    """``client_from(address)``: a client whose requests come from ``address``."""
    clients: list[httpx.AsyncClient] = []
    # Redis keeps windows between tests: each test's addresses are its own.
    base = f"10.{id(strict_app) % 250}"

    def make(host: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=strict_app, client=(f"{base}.{host}", 1234))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def _wrong(client: httpx.AsyncClient, email: str) -> int:
    response = await client.post(LOGIN, json={"email": email, "password": "wrong password"})
    return response.status_code


async def test_a_guessers_address_is_stopped_while_the_owner_still_signs_in(
    client_from: Client,
) -> None:
    owner = client_from("1.7")
    user = await signup(owner)
    attacker = client_from("66.6")
    statuses = [await _wrong(attacker, user.email) for _ in range(12)]
    assert statuses == [401] * 3 + [429] * 9
    refused = await attacker.post(LOGIN, json={"email": user.email, "password": PASSWORD})
    assert refused.status_code == 429
    assert error_code(refused) == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    # 12 refused attempts from one address never reached the email's ceiling (8)
    right = await owner.post(LOGIN, json={"email": user.email, "password": PASSWORD})
    assert right.status_code == 200, right.text


async def test_the_owner_is_limited_too_on_their_own_address(client_from: Client) -> None:
    owner = client_from("1.8")
    user = await signup(owner)  # one attempt counted
    assert [await _wrong(owner, user.email) for _ in range(3)] == [401, 401, 429]
    right = await owner.post(LOGIN, json={"email": user.email, "password": PASSWORD})
    assert right.status_code == 429


async def test_guessing_from_many_addresses_meets_the_per_email_ceiling(
    client_from: Client,
) -> None:
    owner = client_from("1.9")
    user = await signup(owner)  # 1 of 8
    statuses = [await _wrong(client_from(f"77.{n}"), user.email) for n in range(9)]
    assert statuses == [401] * 7 + [429] * 2
    right = await owner.post(LOGIN, json={"email": user.email, "password": PASSWORD})
    assert right.status_code == 429


async def test_login_attempts_per_address_are_limited(client_from: Client) -> None:
    client = client_from("88.1")
    statuses = [
        (
            await client.post(
                LOGIN, json={"email": f"nobody{i}@example.com", "password": "whatever1"}
            )
        ).status_code
        for i in range(21)
    ]
    assert statuses == [401] * 20 + [429]
