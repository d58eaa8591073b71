"""Request ids, the error shape for 404/405/413/500, and secret-free logs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from tests.support.api import PASSWORD, error_code, signup
from tests.support.settings import make_settings
from visiona.app import create_app


@pytest.fixture
async def memory_app() -> AsyncIterator[FastAPI]:
    """An app on in-memory SQLite with a route that fails, to test the error paths."""
    app = create_app(make_settings(database_url="sqlite+aiosqlite:///:memory:"))

    async def boom() -> None:
        raise RuntimeError("SELECT secret FROM internals")  # must never reach the client

    app.add_api_route("/api/v1/boom", boom)
    async with LifespanManager(app):
        yield app


@pytest.fixture
async def http(memory_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=memory_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_request_id_is_generated_and_returned(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert len(response.headers["x-request-id"]) >= 16


async def test_incoming_request_id_is_echoed(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


async def test_unsafe_incoming_request_id_is_replaced(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz", headers={"X-Request-ID": "a b\tc"})
    assert response.headers["x-request-id"] != "a b\tc"


async def test_unknown_route_is_404_with_error_code(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert error_code(response) == "not_found"


async def test_wrong_method_is_405_with_error_code(http: httpx.AsyncClient) -> None:
    response = await http.delete("/api/v1/auth/login")
    assert response.status_code == 405
    assert error_code(response) == "method_not_allowed"


async def test_oversized_body_is_413_by_content_length(http: httpx.AsyncClient) -> None:
    big = b'{"email": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    response = await http.post(
        "/api/v1/auth/login", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


async def test_oversized_chunked_body_is_413(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"x" * 65536

    response = await http.post(
        "/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


async def test_unexpected_error_is_500_without_internals(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/boom")
    assert response.status_code == 500
    assert error_code(response) == "internal_error"
    assert "SELECT" not in response.text
    assert "Traceback" not in response.text


async def test_logs_never_contain_tokens_or_passwords(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = await signup(http)
    await http.get("/api/v1/auth/me", headers=user.headers)
    await http.get(f"/api/v1/auth/me?token={user.token}")
    # everything the server side logged (the test's own HTTP client logs its URLs)
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "/api/v1/auth/me" in text  # the access log is there
    assert user.token not in text
    assert PASSWORD not in text
