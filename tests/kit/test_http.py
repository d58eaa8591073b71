"""Request ids, the error shape for 404/405/413/422/500, secret-free logs, and the one
ASGI layer (the edge) between the server and the router."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Router

from tests.support.api import PASSWORD, error_code, signup
from tests.support.settings import LIFESPAN_TIMEOUT, make_settings
from visiona.app import create_app
from visiona.kit.http import Edge


@pytest.fixture
async def memory_app() -> AsyncIterator[FastAPI]:
    """An app on in-memory SQLite with a route that fails, to test the error paths."""
    app = create_app(make_settings(database_url="sqlite+aiosqlite:///:memory:"))

    async def boom() -> None:
        raise RuntimeError("SELECT secret FROM internals")  # must never reach the client

    app.add_api_route("/api/v1/boom", boom)
    async with LifespanManager(
        app, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
    ):
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


async def test_the_edge_is_the_one_layer_before_the_router(memory_app: FastAPI) -> None:
    # FastAPI's own stack (server errors, exception telemetry, body limit, exceptions,
    # AsyncExitStack) is not built: a regression adds a layer here.
    stack = memory_app.middleware_stack
    assert type(stack) is Edge
    assert stack.app is memory_app.router
    assert isinstance(stack.app, Router)


async def test_cors_is_the_only_layer_added_outside_the_edge() -> None:
    app = create_app(
        make_settings(
            database_url="sqlite+aiosqlite:///:memory:", cors_origins=["https://a.example"]
        )
    )
    stack = app.build_middleware_stack()
    assert type(stack) is CORSMiddleware
    assert type(stack.app) is Edge
    assert stack.app.app is app.router


async def test_validation_error_is_the_422_envelope_through_the_edge(
    http: httpx.AsyncClient,
) -> None:
    user = await signup(http)
    response = await http.get("/api/v1/devices/not-a-uuid", headers=user.headers)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert response.json()["error"]["fields"][0]["loc"] == ["path", "device_id"]
    assert response.headers["x-request-id"]


async def test_errors_rendered_by_the_edge_carry_the_request_id(http: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/api/v1/nothing-here"), ("DELETE", "/api/v1/auth/login")):
        response = await http.request(method, path, headers={"X-Request-ID": "edge-1"})
        assert response.headers["x-request-id"] == "edge-1"
        assert "date" in response.headers
    boom = await http.get("/api/v1/boom", headers={"X-Request-ID": "edge-2"})
    assert boom.status_code == 500
    assert boom.headers["x-request-id"] == "edge-2"


async def test_unexpected_error_is_counted_and_logged_once_without_its_text(
    memory_app: FastAPI, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await http.get("/api/v1/boom")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(":")[0] for r in errors] == ["unhandled error"]
    assert "SELECT" not in caplog.text
    runtime = memory_app.state.runtime
    sample = runtime.metrics.registry.get_sample_value(
        "visiona_http_requests_total",
        {"method": "GET", "route": "/api/v1/boom", "status": "500"},
    )
    assert sample == 1


async def test_head_is_answered_like_get_without_a_body(http: httpx.AsyncClient) -> None:
    get = await http.get("/healthz")
    head = await http.head("/healthz")
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
