"""Use cases for users and web sessions. Opens no transaction of its own."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.auth import repository
from visiona.auth.passwords import verify_password
from visiona.auth.sessions import SessionStore, WebSession
from visiona.kit.clock import utcnow
from visiona.kit.errors import ConflictError, InvalidCredentialsError, RateLimitedError
from visiona.kit.ratelimit import RateLimiter
from visiona.kit.settings import Settings
from visiona.kit.tokens import USER_SESSION_PREFIX, hash_token, new_token


async def register(
    conn: AsyncConnection, *, email: str, password_hash: str, name: str
) -> dict[str, Any]:
    """Create a user; a taken email (any case) is a 409, a lost race too (unique index).

    The caller hashes the password (:func:`hash_password`) before opening the unit of
    work, so no lock is held during the deliberately slow hash.
    """
    if await repository.get_by_email(conn, email) is not None:
        raise ConflictError("An account with this email already exists.")
    return await repository.insert_user(
        conn,
        user_id=uuid.uuid4(),
        email=email,
        name=name,
        password_hash=password_hash,
        now=utcnow(),
    )


@dataclass(frozen=True)
class LoginResult:
    """A user, the plaintext token (shown once) and the session."""

    user: dict[str, Any]
    token: str
    session: WebSession


async def check_login_rate(
    limiter: RateLimiter, settings: Settings, *, email: str, address: str
) -> None:
    """Count a login attempt per email and per client address; over the limit → 429."""
    window = settings.login_rate_window
    by_email = await limiter.hit(f"login:email:{email.lower()}", settings.login_rate_limit, window)
    by_addr = await limiter.hit(
        f"login:addr:{address}", settings.login_rate_limit_per_address, window
    )
    for hit in (by_email, by_addr):
        if not hit.allowed:
            raise RateLimitedError(hit.retry_after, "Too many login attempts; try again later.")


async def find_login_user(conn: AsyncConnection, email: str) -> dict[str, Any] | None:
    """The user signing in with ``email``, password hash included (None if unknown)."""
    return await repository.get_by_email(conn, email)


async def login(
    sessions: SessionStore, user: dict[str, Any] | None, *, password: str
) -> LoginResult:
    """Verify the password and open a web session (one message for every failure).

    Runs outside any database transaction: the argon2 check is deliberately slow.
    """
    if not await verify_password(user["password_hash"] if user else None, password):
        raise InvalidCredentialsError()
    assert user is not None  # noqa: S101 - verify_password is False for a missing user
    user.pop("password_hash", None)
    token = new_token(USER_SESSION_PREFIX)
    session = await sessions.create(hash_token(token), user["id"])
    return LoginResult(user=user, token=token, session=session)


async def logout(sessions: SessionStore, token: str) -> None:
    """End the session of ``token``."""
    await sessions.delete(hash_token(token))
