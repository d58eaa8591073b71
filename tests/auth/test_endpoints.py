"""Users and web sessions through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from tests.support.api import PASSWORD, error_code, signup


async def test_register_login_me_logout_round_trip(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    assert user.token.startswith("vus_")
    me = await client.get("/api/v1/auth/me", headers=user.headers)
    assert me.status_code == 200
    assert me.json()["email"] == user.email
    assert "password_hash" not in me.json()
    out = await client.post("/api/v1/auth/logout", headers=user.headers)
    assert out.status_code == 204
    again = await client.get("/api/v1/auth/me", headers=user.headers)
    assert again.status_code == 401
    assert error_code(again) == "unauthorized"


async def test_duplicate_email_in_any_case_is_a_conflict(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    dup = await client.post(
        "/api/v1/auth/register",
        json={"email": user.email.upper(), "password": PASSWORD, "name": "Other"},
    )
    assert dup.status_code == 409
    assert error_code(dup) == "conflict"


async def test_login_is_case_insensitive_on_email(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    login = await client.post(
        "/api/v1/auth/login", json={"email": user.email.upper(), "password": PASSWORD}
    )
    assert login.status_code == 200


async def test_wrong_password_and_unknown_email_get_the_same_401(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    wrong = await client.post(
        "/api/v1/auth/login", json={"email": user.email, "password": "not the password"}
    )
    unknown = await client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert error_code(wrong) == "invalid_credentials"


async def test_login_sets_httponly_lax_cookie_that_authenticates(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    login = await client.post(
        "/api/v1/auth/login", json={"email": user.email, "password": PASSWORD}
    )
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    token = login.json()["token"]
    client.cookies.set("visiona_session", token)
    try:
        me = await client.get("/api/v1/auth/me")
        assert me.status_code == 200
    finally:
        client.cookies.clear()


async def test_cookie_authenticated_write_needs_same_origin(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    client.cookies.set("visiona_session", user.token)
    try:
        no_origin = await client.post("/api/v1/auth/logout")
        assert no_origin.status_code == 403
        assert error_code(no_origin) == "csrf_failed"
        cross = await client.post("/api/v1/auth/logout", headers={"Origin": "https://evil.test"})
        assert cross.status_code == 403
        same = await client.post("/api/v1/auth/logout", headers={"Origin": "http://testserver"})
        assert same.status_code == 204
    finally:
        client.cookies.clear()


async def test_bearer_write_needs_no_origin(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    out = await client.post("/api/v1/auth/logout", headers=user.headers)
    assert out.status_code == 204


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": PASSWORD},
        {"email": "a@example.com", "password": "short"},
        {"email": "a@example.com"},
        {"email": "a@example.com", "password": PASSWORD, "unexpected": 1},
    ],
)
async def test_bad_registration_is_422_listing_fields(
    client: httpx.AsyncClient, body: dict[str, object]
) -> None:
    response = await client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert response.json()["error"]["fields"]
    assert PASSWORD not in response.text


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/login", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert error_code(response) == "validation_error"


async def test_missing_or_garbage_token_is_401(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/auth/me")).status_code == 401
    garbage = await client.get("/api/v1/auth/me", headers={"Authorization": "Bearer vus_nope"})
    assert garbage.status_code == 401
    assert error_code(garbage) == "unauthorized"
