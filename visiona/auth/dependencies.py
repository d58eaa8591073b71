"""Who is calling: the web-session caller (a bearer token or the cookie), and the
:class:`Principal` acting in one organisation with a role.

Every route that acts in an organisation takes ``Annotated[Principal,
Depends(requires(Permission.X))]`` (the aliases below): the organisation is the
``X-Visiona-Org`` header's, else the caller's personal one; an organisation the caller
is not a member of is a 404 (no oracle), a role without ``X`` a 403 ``forbidden``
naming it. The membership lookup is cached (:mod:`visiona.orgs.access`): no extra
round trip per request. Routes of the user alone (sign-out, ``/auth/me``, the list of
their organisations, accepting an invitation) take :data:`CurrentCaller`.

An API key (``Authorization: Bearer vak_…``, issue 22 item 4) is a principal too: it
acts in its own organisation only (an ``X-Visiona-Org`` naming another → 404), with
the permissions of its scopes intersected with its creator's current role there
(``role`` None, ``actor`` ``api_key``). The key lookup and the creator's role are
cached (:mod:`visiona.apikeys.access`, :mod:`visiona.orgs.access`); each use counts
against the key's rate limit (429 with ``Retry-After``) and is noted for the batched
``last_used_at``. The routes of a person (:data:`CurrentCaller`) refuse a key (401).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import Depends
from starlette.requests import HTTPConnection

from visiona.apikeys.dependencies import API_KEYS
from visiona.audit.service import Actor
from visiona.auth.sessions import SessionStore
from visiona.kit.deps import open_connection, runtime_of
from visiona.kit.errors import CsrfError, NotFoundError, RateLimitedError, UnauthorizedError
from visiona.kit.runtime import Provided
from visiona.kit.tokens import API_KEY_PREFIX, USER_SESSION_PREFIX, has_prefix, hash_token
from visiona.orgs.access import Access
from visiona.orgs.dependencies import MEMBERSHIPS
from visiona.orgs.permissions import (
    Permission,
    Role,
    forbidden,
    permissions_of,
    scopes_permissions,
)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Web sessions (Redis, the database or in process; built by the composition root).
SESSIONS = Provided[SessionStore]("session_store")
#: The header naming the organisation a request acts in (else the personal one).
ORG_HEADER = "X-Visiona-Org"


@dataclass(frozen=True)
class Caller:
    """An authenticated user and the session token that proved it (no organisation)."""

    user_id: uuid.UUID
    token: str
    via_cookie: bool


@dataclass(frozen=True)
class Principal:
    """Who acts, in which organisation, with which permissions.

    ``actor`` is ``user`` for a web session (``role`` is their membership's); an API key
    (issue 22 item 4) is ``api_key`` with ``api_key_id`` (and its name) and the
    permissions of its scopes within its creator's role, ``user_id`` its creator and
    ``role`` None. ``token`` is never an API key's plaintext (it is never kept).
    """

    user_id: uuid.UUID
    org_id: uuid.UUID
    role: Role | None
    permissions: frozenset[Permission]
    token: str
    via_cookie: bool
    actor: Literal["user", "api_key"] = "user"
    api_key_id: uuid.UUID | None = None
    api_key_name: str | None = None

    @property
    def audit_actor(self) -> Actor:
        """Who the audit trail names: the user (an API key: the key, item 4)."""
        if self.actor == "api_key" and self.api_key_id is not None:
            return Actor("api_key", self.api_key_id)
        return Actor.user(self.user_id)

    def can(self, permission: Permission) -> bool:
        """Whether the principal holds ``permission``."""
        return permission in self.permissions

    def require(self, permission: Permission) -> None:
        """403 ``forbidden`` naming ``permission`` unless the principal holds it."""
        if permission not in self.permissions:
            raise forbidden(permission, self.role)


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


async def current_caller(request: HTTPConnection) -> Caller:
    """Authenticate the caller (401 otherwise); enforce same-origin for cookie writes.

    A WebSocket handshake (no HTTP method in its scope) counts as a write: with the
    cookie it must come from the same origin (browsers do not apply CORS to WebSockets).
    """
    token = bearer_token(request)
    via_cookie = False
    if token is None:
        token = request.cookies.get(runtime_of(request).settings.cookie_name)
        via_cookie = token is not None
    if token is not None and not via_cookie and has_prefix(token, API_KEY_PREFIX):
        raise UnauthorizedError("This route needs a person's sign-in; an API key cannot use it.")
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
    return Caller(user_id=session.user_id, token=token, via_cookie=via_cookie)


def requested_org(request: HTTPConnection) -> uuid.UUID | None:
    """The ``X-Visiona-Org`` header's organisation id (None: absent); malformed → 404."""
    raw = request.headers.get(ORG_HEADER)
    if raw is None or not raw.strip():
        return None
    try:
        return uuid.UUID(raw.strip())
    except ValueError:
        raise NotFoundError("Organisation not found.") from None


async def api_key_principal(
    request: HTTPConnection, plaintext: str, org_id: uuid.UUID | None = None
) -> Principal:
    """The principal of an API key: its organisation, its scopes within its creator's
    current role. Unknown, revoked or expired key, or a creator no longer a member →
    401; ``X-Visiona-Org`` (else ``org_id``) naming another organisation → 404; over its
    rate → 429."""
    app = request.app
    conn = open_connection(request)
    key = await API_KEYS.of(app).resolve(hash_token(plaintext), conn)
    if key is None:
        raise UnauthorizedError("API key expired, revoked or not valid.")
    requested = requested_org(request) or org_id
    if requested is not None and requested != key.org_id:
        raise NotFoundError("Organisation not found.")
    creator = await MEMBERSHIPS.of(app).resolve(key.created_by, key.org_id, conn)
    if creator is None:
        raise UnauthorizedError("API key not valid: its creator left the organisation.")
    runtime = runtime_of(request)
    settings = runtime.settings
    hit = await runtime.limiter.hit(
        f"api_key:{key.id}", settings.api_key_rate_limit, settings.api_key_rate_window
    )
    if not hit.allowed:
        raise RateLimitedError(hit.retry_after, "Too many requests with this API key.")
    API_KEYS.of(app).used(key.id)
    return Principal(
        user_id=key.created_by,
        org_id=key.org_id,
        role=None,
        permissions=scopes_permissions(set(key.scopes)) & permissions_of(creator.role),
        token="",
        via_cookie=False,
        actor="api_key",
        api_key_id=key.id,
        api_key_name=key.name,
    )


async def current_principal(request: HTTPConnection, org_id: uuid.UUID | None = None) -> Principal:
    """The caller acting in the requested (or personal) organisation; 404 when they are
    not a member of it (the same answer as an organisation that does not exist). An
    API key acts in its own organisation (:func:`api_key_principal`).

    ``org_id`` is asked for when no ``X-Visiona-Org`` header is sent (the header wins):
    ``GET /events?org=`` for a browser's ``EventSource``, which cannot send headers.
    """
    bearer = bearer_token(request)
    if bearer is not None and has_prefix(bearer, API_KEY_PREFIX):
        return await api_key_principal(request, bearer, org_id)
    caller = await current_caller(request)
    access = await MEMBERSHIPS.of(request.app).resolve(
        caller.user_id, requested_org(request) or org_id, open_connection(request)
    )
    if access is None:
        raise NotFoundError("Organisation not found.")
    return principal_of(caller, access)


def principal_of(caller: Caller, access: Access) -> Principal:
    """``caller`` acting in ``access``'s organisation with its role (the membership
    check is the caller's: :meth:`visiona.orgs.access.Memberships.resolve`)."""
    return Principal(
        user_id=caller.user_id,
        org_id=access.org_id,
        role=access.role,
        permissions=permissions_of(access.role),
        token=caller.token,
        via_cookie=caller.via_cookie,
    )


def requires(permission: Permission) -> Callable[[HTTPConnection], Awaitable[Principal]]:
    """A dependency: the :func:`current_principal`, 403 unless it holds ``permission``.

    The permission is kept on the function (``visiona_permission``): the OpenAPI
    document names it per operation (``x-visiona-permission``) and the matrix test
    reads it there.
    """

    async def dependency(request: HTTPConnection) -> Principal:
        principal = await current_principal(request)
        principal.require(permission)
        return principal

    dependency.visiona_permission = permission  # type: ignore[attr-defined]  # read by the docs
    dependency.__name__ = f"requires_{permission.name.lower()}"
    return dependency


def permission_of(dependency: object) -> Permission | None:
    """The permission a :func:`requires` dependency checks (None for anything else)."""
    found = getattr(dependency, "visiona_permission", None)
    return found if isinstance(found, Permission) else None


_REQUIRES = {permission: requires(permission) for permission in Permission}


def require(permission: Permission) -> Callable[[HTTPConnection], Awaitable[Principal]]:
    """The one :func:`requires` dependency of ``permission`` (shared by every route)."""
    return _REQUIRES[permission]


#: The signed-in user, in no particular organisation.
CurrentCaller = Annotated[Caller, Depends(current_caller)]
#: Acting in an organisation with read access (every role).
CurrentPrincipal = Annotated[Principal, Depends(require(Permission.READ))]
Reader = CurrentPrincipal
DeviceWriter = Annotated[Principal, Depends(require(Permission.DEVICES_WRITE))]
ModelWriter = Annotated[Principal, Depends(require(Permission.MODELS_WRITE))]
ModelDownloader = Annotated[Principal, Depends(require(Permission.MODELS_DOWNLOAD))]
Deployer = Annotated[Principal, Depends(require(Permission.DEPLOY))]
Proxier = Annotated[Principal, Depends(require(Permission.PROXY))]
EnrollmentAdmin = Annotated[Principal, Depends(require(Permission.ENROLLMENT))]
SessionsDep = Annotated[SessionStore, Depends(SESSIONS.dependency)]
