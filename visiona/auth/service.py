"""Use cases for users and web sessions. Opens no transaction of its own.

Each records its audit event on the connection it is given. A web session lives in
the session store, not in SQL, so sign-in and sign-out pair the store's change with
the event's transaction at the edge (see :mod:`visiona.auth.endpoints`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.service import Actor
from visiona.auth import repository
from visiona.auth.passwords import verify_password
from visiona.auth.repository import Credentials, User
from visiona.auth.sessions import SessionStore, WebSession
from visiona.kit.clock import utcnow
from visiona.kit.errors import ConflictError, InvalidCredentialsError, RateLimitedError
from visiona.kit.ratelimit import RateLimiter
from visiona.kit.settings import Settings
from visiona.kit.tokens import USER_SESSION_PREFIX, hash_token, new_token
from visiona.orgs import service as orgs


async def register(conn: AsyncConnection, *, email: str, password_hash: str, name: str) -> User:
    """Create a user and their personal organisation (owner), in the same transaction; a
    taken email (any case) is a 409, a lost race too (unique index).

    The caller hashes the password (:func:`hash_password`) before opening the unit of
    work, so no lock is held during the deliberately slow hash.
    """
    if await repository.get_by_email(conn, email) is not None:
        raise ConflictError("An account with this email already exists.")
    now = utcnow()
    user = await repository.insert_user(
        conn,
        user_id=uuid.uuid4(),
        email=email,
        name=name,
        password_hash=password_hash,
        now=now,
    )
    label = name.strip() or email.split("@", 1)[0]
    org = await orgs.create_personal_org(conn, user.id, label, now, record=False)
    await audit.record(
        conn,
        "user.registered",
        actor=Actor.user(user.id),
        owner_id=user.id,
        org_id=org.id,
        target_id=user.id,
    )
    await orgs.record_created(conn, org, user.id)
    return user


@dataclass(frozen=True)
class LoginResult:
    """A user, the plaintext token (shown once) and the session."""

    user: User
    token: str
    session: WebSession


async def check_login_rate(
    limiter: RateLimiter, settings: Settings, *, email: str, address: str
) -> None:
    """Count a login attempt; over a limit → 429 ``rate_limited`` with Retry-After.

    Three fixed windows, checked narrowest last so that a refused attempt is counted
    only up to the limit that refused it: the client address (all emails,
    ``login_rate_limit_per_address``), then the pair (email, client address)
    (``login_rate_limit``), then the email from every address
    (``login_rate_limit_per_email``, a generous ceiling). Someone guessing one
    account's password from their address is stopped there, while the owner signs in
    from theirs; the attempts a stopped address keeps making never reach the email's
    ceiling, so only guessing from many addresses at once can lock the owner out.
    """
    window = settings.login_rate_window
    email_key = email.lower()
    checks = (
        (f"login:addr:{address}", settings.login_rate_limit_per_address),
        (f"login:pair:{address}:{email_key}", settings.login_rate_limit),
        (f"login:email:{email_key}", settings.login_rate_limit_per_email),
    )
    for key, limit in checks:
        hit = await limiter.hit(key, limit, window)
        if not hit.allowed:
            raise RateLimitedError(hit.retry_after, "Too many login attempts; try again later.")


async def find_login_user(conn: AsyncConnection, email: str) -> Credentials | None:
    """The user signing in with ``email``, password hash included (None if unknown)."""
    return await repository.get_by_email(conn, email)


async def login(sessions: SessionStore, found: Credentials | None, *, password: str) -> LoginResult:
    """Verify the password and open a web session (one message for every failure).

    Runs outside any database transaction: the argon2 check is deliberately slow.
    """
    if not await verify_password(found.password_hash if found else None, password):
        raise InvalidCredentialsError()
    assert found is not None  # noqa: S101 - verify_password is False for a missing user
    token = new_token(USER_SESSION_PREFIX)
    session = await sessions.create(hash_token(token), found.id)
    return LoginResult(user=found.user(), token=token, session=session)


async def record_sign_in(conn: AsyncConnection, user: User) -> None:
    """Record ``user.signed_in`` (in the user's personal organisation's trail)."""
    org_id = await orgs.personal_org_id(conn, user.id)
    await audit.record(
        conn, "user.signed_in", actor=Actor.user(user.id), org_id=org_id, target_id=user.id
    )


async def record_sign_in_failed(
    conn: AsyncConnection, email: str, found: Credentials | None
) -> None:
    """Record ``user.sign_in_failed`` with the email as typed (never the password).

    The trail is the named account's personal organisation's when one exists;
    otherwise the event has no owner nor organisation and no user sees it (an operator
    can, in the database). The actor is a user nobody authenticated: its id is null
    even when the account exists.
    """
    owner = found.id if found is not None else None
    org_id = None if owner is None else await orgs.personal_org_id(conn, owner)
    await audit.record(
        conn,
        "user.sign_in_failed",
        actor=Actor("user"),
        owner_id=owner,
        org_id=org_id,
        target_id=owner,
        detail={"email": email},
    )


async def logout(
    conn: AsyncConnection, sessions: SessionStore, user_id: uuid.UUID, token: str
) -> None:
    """Record ``user.signed_out`` on ``conn``, then end the session of ``token``.

    The event is written first: if ending the session fails, the caller's unit of
    work rolls the event back. With the SQL session store both are one transaction.
    """
    org_id = await orgs.personal_org_id(conn, user_id)
    await audit.record(
        conn, "user.signed_out", actor=Actor.user(user_id), org_id=org_id, target_id=user_id
    )
    # a SQL session store deletes on ``conn`` too: the event and the end commit together
    await sessions.delete(hash_token(token), conn)
