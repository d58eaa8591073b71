"""Who is calling: the web-session principal, taken from a bearer token or the cookie."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends
from starlette.requests import HTTPConnection

from visiona.auth.sessions import SessionStore
from visiona.kit.deps import open_connection, runtime_of
from visiona.kit.errors import CsrfError, UnauthorizedError
from visiona.kit.runtime import Provided
from visiona.kit.tokens import USER_SESSION_PREFIX, has_prefix, hash_token

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Web sessions (Redis, the database or in process; built by the composition root).
SESSIONS = Provided[SessionStore]("session_store")


@dataclass(frozen=True)
class Principal:
    """An authenticated user and the session token that proved it."""

    user_id: uuid.UUID
    token: str
    via_cookie: bool


def bearer_token(request: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _same_origin(request: HTTPConnection) -> bool:
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    if not origin or not host or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


async def current_principal(request: HTTPConnection) -> Principal:
    """Authenticate the caller (401 otherwise); enforce same-origin for cookie writes.

    A WebSocket handshake (no HTTP method in its scope) counts as a write: with the
    cookie it must come from the same origin (browsers do not apply CORS to WebSockets).
    """
    token = bearer_token(request)
    via_cookie = False
    if token is None:
        token = request.cookies.get(runtime_of(request).settings.cookie_name)
        via_cookie = token is not None
    if not token or not has_prefix(token, USER_SESSION_PREFIX):
        raise UnauthorizedError()
    # On the request's connection when its unit of work is already open (the endpoint
    # declared it first); otherwise the store uses a short one of its own and gives it
    # back before the endpoint's unit of work asks the pool.
    session = await SESSIONS.of(request.app).touch(hash_token(token), open_connection(request))
    if session is None:
        raise UnauthorizedError("Session expired or not valid.")
    method = request.scope.get("method")
    if via_cookie and method not in _SAFE_METHODS and not _same_origin(request):
        raise CsrfError()
    return Principal(user_id=session.user_id, token=token, via_cookie=via_cookie)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
SessionsDep = Annotated[SessionStore, Depends(SESSIONS.dependency)]
