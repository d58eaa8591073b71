"""Login attempts are limited per email and per client address, in process and in Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.support.api import PASSWORD, error_code, signup
from visiona.app import create_app
from visiona.kit.settings import Settings


@pytest.fixture
async def strict_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    strict = settings.model_copy(
        update={"login_rate_limit": 3, "login_rate_limit_per_address": 5, "login_rate_window": 60}
    )
    app = create_app(strict)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app, client=(f"10.9.{id(app) % 250}.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def test_login_attempts_per_email_are_limited(strict_client: httpx.AsyncClient) -> None:
    user = await signup(strict_client)  # one successful login counted
    statuses = []
    for _ in range(3):
        response = await strict_client.post(
            "/api/v1/auth/login", json={"email": user.email, "password": "wrong password"}
        )
        statuses.append(response.status_code)
    assert statuses == [401, 401, 429]
    assert error_code(response) == "rate_limited"
    assert int(response.headers["retry-after"]) >= 1
    # even the right password is refused while the window lasts
    right = await strict_client.post(
        "/api/v1/auth/login", json={"email": user.email, "password": PASSWORD}
    )
    assert right.status_code == 429


async def test_login_attempts_per_address_are_limited(strict_client: httpx.AsyncClient) -> None:
    statuses = [
        (
            await strict_client.post(
                "/api/v1/auth/login",
                json={"email": f"nobody{i}@example.com", "password": "whatever1"},
            )
        ).status_code
        for i in range(6)
    ]
    assert statuses == [401] * 5 + [429]
