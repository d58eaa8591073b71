"""Health and metrics on both backends."""

from __future__ import annotations

import httpx

from tests.support.api import signup


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
