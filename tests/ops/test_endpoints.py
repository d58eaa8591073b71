"""Health and metrics on both backends; metrics behind their bearer token when one is set."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from tests.support.api import error_code, signup
from tests.support.settings import LIFESPAN_TIMEOUT
from visiona.app import create_app
from visiona.kit.settings import Settings


async def test_healthz_reports_each_dependency(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "session_store": "ok", "object_storage": "ok"},
    }


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    await client.get("/api/v1/auth/me", headers=user.headers)
    text = (await client.get("/metrics")).text
    assert 'visiona_http_requests_total{method="GET",route="/api/v1/auth/me",status="200"}' in text
    assert "visiona_http_request_duration_seconds_bucket" in text
    assert "visiona_db_pool_in_use" in text
    assert "visiona_session_store_errors_total" in text


METRICS_TOKEN = "metrics-scraper-token-5f0c2a"


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with ``VISIONA_METRICS_TOKEN`` set."""
    app = create_app(settings.model_copy(update={"metrics_token": SecretStr(METRICS_TOKEN)}))
    async with LifespanManager(
        app, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
    ):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {METRICS_TOKEN}", f"Bearer {METRICS_TOKEN}x"],
)
async def test_with_a_metrics_token_metrics_need_it(
    guarded: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await guarded.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "visiona_" not in response.text


async def test_with_a_metrics_token_the_scraper_gets_the_metrics(
    guarded: httpx.AsyncClient,
) -> None:
    response = await guarded.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    assert "visiona_http_requests_total" in response.text
    # the token is for /metrics only: it signs no one in
    me = await guarded.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert me.status_code == 401
