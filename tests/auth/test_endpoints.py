"""Users and web sessions through the HTTP API, on every session store (see conftest)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI
from sqlalchemy import select, text

from tests.support.api import PASSWORD, error_code, signup
from tests.support.settings import LIFESPAN_TIMEOUT
from visiona.app import create_app
from visiona.auth.dependencies import SESSIONS, CurrentPrincipal
from visiona.auth.schemas import UserOut
from visiona.auth.sessions import SqlSessionStore
from visiona.kit.deps import Conn
from visiona.kit.schema import web_sessions
from visiona.kit.settings import Settings
from visiona.kit.tokens import hash_token


async def test_register_login_me_logout_round_trip(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    assert user.token.startswith("vus_")
    me = await client.get("/api/v1/auth/me", headers=user.headers)
    assert me.status_code == 200
    assert me.json()["email"] == user.email
    assert "password_hash" not in me.json()
    # the hot route's orjson body is the pydantic model's, byte for byte
    assert me.content == UserOut.model_validate(me.json()).model_dump_json().encode()
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


# -- sessions in the database (no Redis): the request's connection, restarts ---------


def _conn_first_routes() -> APIRouter:
    """Routes that open the unit of work before the session check (the other order)."""
    router = APIRouter()

    @router.get("/test/conn-first")
    async def conn_first_read(conn: Conn, principal: CurrentPrincipal) -> dict[str, str]:
        await conn.execute(text("SELECT 1"))
        return {"user_id": str(principal.user_id)}

    @router.post("/test/conn-first")
    async def conn_first_write(conn: Conn, principal: CurrentPrincipal) -> dict[str, str]:
        await conn.execute(text("SELECT 1"))
        return {"user_id": str(principal.user_id)}

    return router


async def test_concurrent_requests_never_wait_for_their_own_connection(
    settings: Settings,
) -> None:
    # The embedded SQLite pool has ONE connection. The session check runs on the
    # request's unit of work when it is already open, or on a short connection of its
    # own given back before the endpoint's: a request holding the connection and
    # asking for a second would wait for itself until the pool timeout (503). The
    # store here writes on every use (refresh_after=0), so writes interleave too.
    roomy = settings.model_copy(update={"db_pool_timeout": 120.0})
    app = create_app(roomy)
    app.include_router(_conn_first_routes())
    async with LifespanManager(
        app, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
    ):
        runtime = app.state.runtime
        if SESSIONS.of(app).kind == "database":
            SESSIONS.provide(
                app,
                SqlSessionStore(
                    runtime.db, roomy.session_idle_ttl, roomy.session_absolute_ttl, refresh_after=0
                ),
            )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            users = [await signup(client) for _ in range(3)]
            calls = []
            for round_ in range(8):
                for user in users:
                    h = user.headers
                    calls += [
                        client.get("/api/v1/auth/me", headers=h),
                        client.get("/test/conn-first", headers=h),
                        client.post("/test/conn-first", headers=h),
                        client.post(
                            "/api/v1/devices",
                            headers=h,
                            json={"name": "d", "serial_number": f"sn-{round_}"},
                        ),
                    ]
            responses = await asyncio.gather(*calls)
            assert sorted({r.status_code for r in responses}) == [200, 201], [
                r.text for r in responses if r.status_code >= 300
            ][:3]
            for user in users:  # every session still good after the writes
                me = await client.get("/test/conn-first", headers=user.headers)
                assert me.json() == {"user_id": user.id}


async def test_session_is_stored_under_the_token_hash_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await signup(client)
    runtime = app.state.runtime
    key = hash_token(user.token)
    if SESSIONS.of(app).kind == "redis":
        assert await runtime.redis.exists(f"visiona:sess:{key}") == 1
        assert await runtime.redis.exists(f"visiona:sess:{user.token}") == 0
    else:
        async with runtime.db.reading() as conn:
            rows = (await conn.execute(select(web_sessions))).all()
        assert [row.token_hash for row in rows if str(row.user_id) == user.id] == [key]
        assert all(user.token not in str(tuple(row)) for row in rows)
    out = await client.post("/api/v1/auth/logout", headers=user.headers)
    assert out.status_code == 204
    if SESSIONS.of(app).kind == "redis":
        assert await runtime.redis.exists(f"visiona:sess:{key}") == 0
    else:
        async with runtime.db.reading() as conn:
            query = select(web_sessions).where(web_sessions.c.token_hash == key)
            assert (await conn.execute(query)).one_or_none() is None


async def test_server_picks_the_session_store_the_configuration_implies(app: FastAPI) -> None:
    runtime = app.state.runtime
    expected = "redis" if runtime.settings.redis_url else "database"
    assert SESSIONS.of(app).kind == expected
