"""HTTP routes for users and web sessions (HTTP in/out only)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response, status

from visiona.auth import repository, service
from visiona.auth.dependencies import CurrentCaller, SessionsDep
from visiona.auth.passwords import hash_password
from visiona.auth.schemas import LoginRequest, LoginResponse, RegisterRequest, UserOut
from visiona.kit.deps import Conn, DatabaseDep, LimiterDep, SettingsDep, client_address
from visiona.kit.direct import solved_get
from visiona.kit.errors import (
    ConflictError,
    CsrfError,
    InvalidCredentialsError,
    RateLimitedError,
    UnauthorizedError,
)
from visiona.kit.http import error_responses
from visiona.kit.jsonout import JSONOut
from visiona.kit.tokens import hash_token

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    summary="Create an account",
    responses=error_responses(ConflictError),
)
async def register(body: RegisterRequest, db: DatabaseDep) -> UserOut:
    """Create a user; the password is stored as an argon2id hash. Email taken → 409."""
    password_hash = await hash_password(body.password)  # slow by design: before the transaction
    # unit of work: its own, opened after the slow password hash
    async with db.transaction() as conn:
        user = await service.register(
            conn, email=body.email, password_hash=password_hash, name=body.name
        )
    return UserOut.model_validate(user)


@router.post(
    "/login",
    response_model=LoginResponse,
    summary="Sign in",
    responses=error_responses(InvalidCredentialsError, RateLimitedError),
)
async def login(
    body: LoginRequest,
    request: Request,
    response: Response,
    *,
    db: DatabaseDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    sessions: SessionsDep,
) -> LoginResponse:
    """Open a web session: returns a bearer token and sets it as an HttpOnly cookie.

    Attempts are rate-limited per (email, client address), per client address and, with a
    generous ceiling, per email from all addresses (429 ``rate_limited`` with
    Retry-After): a wrong-password storm from one address does not lock the owner out.
    """
    await service.check_login_rate(
        limiter, settings, email=body.email, address=client_address(request)
    )
    # unit of work: its own, only for the lookup: the slow check runs after it
    async with db.transaction() as conn:
        user = await service.find_login_user(conn, body.email)
    try:
        result = await service.login(sessions, user, password=body.password)
    except InvalidCredentialsError:
        # unit of work: its own, short, for the audit event of the failure
        async with db.transaction() as conn:
            await service.record_sign_in_failed(conn, body.email, user)
        raise
    try:
        # unit of work: its own, for the audit event; the session lives in the store
        async with db.transaction() as conn:
            await service.record_sign_in(conn, result.user)
    except BaseException:
        # no session without its event
        await sessions.delete(hash_token(result.token))
        raise
    response.set_cookie(
        settings.cookie_name,
        result.token,
        max_age=settings.session_absolute_ttl,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )
    return LoginResponse(
        user=UserOut.model_validate(result.user),
        token=result.token,
        expires_at=datetime.fromtimestamp(result.session.expires_at, UTC),
    )


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Sign out",
    responses=error_responses(UnauthorizedError, CsrfError),
)
async def logout(
    principal: CurrentCaller, conn: Conn, sessions: SessionsDep, settings: SettingsDep
) -> Response:
    """End the current web session and clear the cookie."""
    await service.logout(conn, sessions, principal.user_id, principal.token)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(settings.cookie_name, path="/")
    return response


@solved_get(
    router,
    "/me",
    response_model=UserOut,
    summary="The signed-in user",
    responses=error_responses(UnauthorizedError),
)
async def me(principal: CurrentCaller, db: DatabaseDep) -> Response:
    """Return the user of the current session."""
    # one hot read on the driver (visiona/kit/hotread.py), no unit of work; the answer
    # encoded by orjson (visiona/kit/jsonout.py), response_model documents it
    user = await repository.get_by_id(db, principal.user_id)
    if user is None:  # the account is gone; the session is meaningless
        raise UnauthorizedError("Session expired or not valid.")
    return JSONOut(user)
