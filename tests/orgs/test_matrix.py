"""Every operation of the OpenAPI document, every role, its own and another organisation.

Generated from the document: an operation either names its permission
(``x-visiona-permission``) or is listed in :data:`EXCLUDED` with the reason, so a new
route cannot be missed. For each permissioned operation and each role of a team:

- in its own organisation, a role without the permission → 403 ``forbidden`` naming
  it; a role with it → anything but 401/403/404;
- acting in (or, for ``/orgs/{id}``, naming) an organisation the caller is not a
  member of → 404;
- naming another organisation's resource while acting in its own → 404 (403 first
  when the role lacks the permission anyway: nothing about the resource is read).

The same walk with an API key of each scope (issue 22 item 4): allowed exactly where
its scope's permissions reach, 404 elsewhere, 401 on the routes of a person.

On SQLite and PostgreSQL (the ``client`` fixture runs on both).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from tests.support.api import User, signup
from tests.support.devices import serial
from tests.support.models import nef
from tests.support.orgs import acting, create_org, invite, member
from visiona.orgs.permissions import ROLE_PERMISSIONS, SCOPE_PERMISSIONS, Permission, Role

API = "/api/v1"

#: Operations that act in no organisation (method, path): why.
EXCLUDED: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/auth/register"): "public: creates an account",
    ("POST", "/api/v1/auth/login"): "public: signs in",
    ("POST", "/api/v1/auth/logout"): "the caller's own session",
    ("GET", "/api/v1/auth/me"): "the caller's own account",
    ("GET", "/api/v1/orgs"): "the caller's own organisations (tests/orgs/test_orgs.py)",
    ("POST", "/api/v1/orgs"): "any signed-in user creates one (tests/orgs/test_orgs.py)",
    ("POST", "/api/v1/invitations/accept"): "the invitee is no member yet "
    "(tests/orgs/test_invitations.py)",
    ("POST", "/api/v1/agent/pair"): "the agent, with a pairing token",
    ("POST", "/api/v1/agent/enroll"): "the agent, with an enrollment key (its organisation "
    "is the key's: tests/enrollment/test_enrollment_keys.py)",
    ("POST", "/api/v1/agent/session/renew"): "the agent, with its session token",
    ("POST", "/api/v1/agent/status"): "the agent, with its session token",
    ("GET", "/healthz"): "operations: public",
    ("GET", "/metrics"): "operations: its own token",
}
_READS = {"GET", "HEAD"}
_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Operation:
    """One operation of the document."""

    method: str
    path: str
    permission: Permission
    org_in_path: bool

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def operations(app: FastAPI) -> list[Operation]:
    """Every permissioned operation of ``app``'s document."""
    found = []
    for path, methods in app.openapi()["paths"].items():
        for method, operation in methods.items():
            permission = operation.get("x-visiona-permission")
            if permission is not None:
                org_in_path = operation.get("x-visiona-org") == "path"
                found.append(Operation(method.upper(), path, Permission(permission), org_in_path))
    return found


def test_every_operation_names_its_permission_or_why_not(app: FastAPI) -> None:
    document = app.openapi()["paths"]
    every = {(m.upper(), p) for p, ms in document.items() for m in ms}
    named = {(op.method, op.path) for op in operations(app)}
    assert every - named == set(EXCLUDED), "an operation names no permission nor a reason"
    assert not named & set(EXCLUDED)
    for op in operations(app):
        if op.method not in _READS:  # a change never needs only `read`
            assert op.permission is not Permission.READ, op.label


@dataclass
class Scope:
    """The resources of one organisation, made by ``maker`` acting in it."""

    client: httpx.AsyncClient
    maker: User
    org_id: str
    fixed: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return acting(self.maker, self.org_id)

    async def device(self) -> str:
        response = await self.client.post(
            f"{API}/devices",
            json={"name": "d", "serial_number": serial(), "device_type": "kl520"},
            headers=self.headers,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def model(self) -> str:
        response = await self.client.post(
            f"{API}/models",
            data={"target_chip": "kl520"},
            files={"file": ("m.nef", nef(256), "application/octet-stream")},
            headers=self.headers,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def pairing_token(self) -> dict[str, Any]:
        response = await self.client.post(f"{API}/pairing-tokens", json={}, headers=self.headers)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def session_token(self) -> str:
        token = await self.pairing_token()
        paired = await self.client.post(
            f"{API}/agent/pair",
            json={
                "pairing_token": token["token"],
                "serial_number": serial(),
                "device_type": "kl520",
                "name": "paired",
            },
        )
        assert paired.status_code == 201, paired.text
        self.fixed.setdefault("paired_device", str(paired.json()["device_id"]))
        return str(paired.json()["session_token_id"])

    async def invitation(self) -> str:
        email = f"inv-{uuid.uuid4().hex[:10]}@example.com"
        return str((await invite(self.client, self.maker, self.org_id, email, "viewer"))["id"])

    async def member_id(self) -> str:
        return (await member(self.client, self.maker, self.org_id, "viewer")).id

    async def enrollment_key(self) -> str:
        response = await self.client.post(
            f"{API}/enrollment-keys",
            json={"name": "k", "max_uses": 1, "expires_in_hours": 1},
            headers=self.headers,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def rollout(self) -> str:
        response = await self.client.post(
            f"{API}/rollouts",
            json={"model_id": self.fixed["model_id"], "device_ids": [self.fixed["device_id"]]},
            headers=self.headers,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def api_key(self) -> str:
        response = await self.client.post(
            f"{API}/api-keys",
            json={"name": "ci", "scopes": ["read"], "expires_in_days": 1},
            headers=self.headers,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def webhook(self) -> str:
        response = await self.client.post(
            f"{API}/webhooks",
            json={"url": "https://hooks.example.com/in", "events": ["device.*"]},
            headers=self.headers,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def prepare(self) -> None:
        """The resources the non-destructive operations share."""
        self.fixed["device_id"] = await self.device()
        self.fixed["model_id"] = await self.model()
        self.fixed["pairing_token_id"] = str((await self.pairing_token())["id"])
        self.fixed["session_token_id"] = await self.session_token()
        self.fixed["invitation_id"] = await self.invitation()
        self.fixed["user_id"] = await self.member_id()
        self.fixed["enrollment_key_id"] = await self.enrollment_key()
        self.fixed["rollout_id"] = await self.rollout()
        self.fixed["api_key_id"] = await self.api_key()
        self.fixed["webhook_id"] = await self.webhook()

    async def value(self, name: str, path: str, *, fresh: bool) -> str:  # noqa: PLR0911 - one per parameter
        """The value of path parameter ``name`` of ``path`` (new ones for a deletion)."""
        if name == "org_id":
            return self.org_id
        if name == "path":
            return "status"
        if name == "token_id":
            kind = "session_token_id" if "/session-tokens/" in path else "pairing_token_id"
            if fresh:
                if kind == "session_token_id":
                    return await self.session_token()
                return str((await self.pairing_token())["id"])
            return self.fixed[kind]
        if name == "key_id":  # an enrollment key's or an API key's
            name = "api_key_id" if "/api-keys/" in path else "enrollment_key_id"
        if fresh:
            makers: dict[str, Callable[[], Awaitable[str]]] = {
                "device_id": self.device,
                "model_id": self.model,
                "invitation_id": self.invitation,
                "user_id": self.member_id,
                "enrollment_key_id": self.enrollment_key,
                "api_key_id": self.api_key,
                "webhook_id": self.webhook,
            }
            return await makers[name]()
        return self.fixed[name]


def _body(op: Operation, scope: Scope) -> dict[str, Any]:  # noqa: PLR0911, PLR0912 - one per body
    """Request arguments that pass validation, for the operations that take a body."""
    path, method = op.path, op.method
    if path == f"{API}/events":  # the live stream: ended by the server at once
        return {"params": {"timeout": "0.05"}}
    if path.endswith("/deployments") and method == "POST":
        return {"json": {"model_id": scope.fixed["model_id"]}}
    if path == f"{API}/devices" and method == "POST":
        return {"json": {"name": "n", "serial_number": serial(), "device_type": "kl520"}}
    if path.endswith("/invitations") and method == "POST":
        return {"json": {"email": f"x-{uuid.uuid4().hex[:8]}@example.com", "role": "viewer"}}
    if path.endswith("/tags"):
        return {"json": {"tags": {"site": "a"}} if method == "PUT" else {"set": {"site": "b"}}}
    if "/members/" in path and method == "PATCH":
        return {"json": {"role": "viewer"}}
    if method == "PATCH":
        return {"json": {"description" if "/webhooks/" in path else "name": "renamed"}}
    if path == f"{API}/api-keys" and method == "POST":
        return {"json": {"name": "k", "scopes": ["read"], "expires_in_days": 1}}
    if path == f"{API}/webhooks" and method == "POST":
        return {"json": {"url": "https://hooks.example.com/new", "events": ["*"]}}
    if path == f"{API}/pairing-tokens" and method == "POST":
        return {"json": {}}
    if path == f"{API}/enrollment-keys" and method == "POST":
        return {"json": {"name": "k", "max_uses": 1, "expires_in_hours": 1}}
    if path == f"{API}/rollouts" and method == "POST":
        return {
            "json": {"model_id": scope.fixed["model_id"], "device_ids": [scope.fixed["device_id"]]}
        }
    if path == f"{API}/models" and method == "POST":
        file = ("m.nef", nef(128), "application/octet-stream")
        return {"data": {"target_chip": "kl520"}, "files": {"file": file}}
    if path.endswith("/file") and method == "PUT":
        return {"files": {"file": ("m.nef", nef(64, 1), "application/octet-stream")}}
    return {}


async def _url(op: Operation, scope: Scope, org_scope: Scope, *, fresh: bool) -> str:
    """The operation's URL: resources of ``scope``, the organisation of ``org_scope``."""
    url = op.path
    for name in _PARAM.findall(op.path):
        source = org_scope if name == "org_id" else scope
        url = url.replace(f"{{{name}}}", await source.value(name, op.path, fresh=fresh))
    return url


def _verdict(op: Operation, response: httpx.Response, expected: str) -> str | None:
    """None when ``response`` is what ``expected`` says, else a description."""
    status = response.status_code
    code = None
    if op.method != "HEAD" and response.headers.get("content-type", "").startswith(
        "application/json"
    ):
        body = response.json()
        code = body.get("error", {}).get("code") if isinstance(body, dict) else None
        message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
    else:
        message = ""
    # the device has no tunnel: the proxy and the deployment say so (a HEAD without a
    # body); nothing else fails
    offline = code in ("device_offline", "deployment_failed") or (
        status == 502 and op.method == "HEAD"
    )
    if expected == "allowed" and status not in (401, 403, 404) and (status < 500 or offline):
        return None
    if expected == "forbidden" and status == 403 and op.method == "HEAD":
        return None
    if expected == "forbidden" and status == 403 and code == "forbidden":
        return None if op.permission.value in message else f"403 without the permission: {message}"
    if expected == "not_found" and status == 404 and code in ("not_found", None):
        return None
    return f"expected {expected}, got {status} {code}"


async def test_every_role_in_its_own_and_another_organisation(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    users = {Role.OWNER: owner}
    for role in (Role.ADMIN, Role.OPERATOR, Role.VIEWER):
        users[role] = await member(client, owner, team, role.value)
    own = Scope(client, owner, team)
    await own.prepare()
    stranger = await signup(client)
    other = Scope(client, stranger, stranger.org_id)
    await other.prepare()

    failures: list[str] = []
    for op in operations(app):
        destructive = op.method == "DELETE" and "/proxy/" not in op.path
        for role, user in users.items():
            allowed = op.permission in ROLE_PERMISSIONS[role]
            # 1. its own organisation
            url = await _url(op, own, own, fresh=destructive and allowed)
            response = await client.request(
                op.method, url, headers=acting(user, team), **_body(op, own)
            )
            verdict = _verdict(op, response, "allowed" if allowed else "forbidden")
            if verdict:
                failures.append(f"{op.label} as {role} in its organisation: {verdict}")
            # 2. acting in (naming) an organisation it is not a member of
            url = await _url(op, other, other, fresh=False)
            response = await client.request(
                op.method, url, headers=acting(user, other.org_id), **_body(op, other)
            )
            verdict = _verdict(op, response, "not_found")
            if verdict:
                failures.append(f"{op.label} as {role} in another organisation: {verdict}")
            # 3. another organisation's resource, acting in its own
            if op.org_in_path or not _PARAM.search(op.path):
                continue
            url = await _url(op, other, own, fresh=False)
            response = await client.request(
                op.method, url, headers=acting(user, team), **_body(op, other)
            )
            verdict = _verdict(op, response, "not_found" if allowed else "forbidden")
            if verdict:
                failures.append(f"{op.label} as {role} on another's resource: {verdict}")
    assert not failures, "\n".join(failures)


async def test_every_api_key_scope_in_its_own_and_another_organisation(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """An owner's key with one scope: allowed exactly where the scope's permissions
    reach; another organisation → 404; the routes of a person (``/orgs/{id}``) → 401."""
    owner = await signup(client)
    team = await create_org(client, owner)
    own = Scope(client, owner, team)
    await own.prepare()
    stranger = await signup(client)
    other = Scope(client, stranger, stranger.org_id)
    await other.prepare()
    keys = {}
    for scope in SCOPE_PERMISSIONS:
        made = await client.post(
            f"{API}/api-keys",
            json={"name": scope, "scopes": [scope], "expires_in_days": 1},
            headers=acting(owner, team),
        )
        assert made.status_code == 201, made.text
        keys[scope] = {"Authorization": f"Bearer {made.json()['key']}"}

    failures: list[str] = []
    for op in operations(app):
        destructive = op.method == "DELETE" and "/proxy/" not in op.path
        for scope, headers in keys.items():
            allowed = op.permission in SCOPE_PERMISSIONS[scope]
            url = await _url(op, own, own, fresh=destructive and allowed)
            response = await client.request(op.method, url, headers=headers, **_body(op, own))
            if op.org_in_path:
                if response.status_code != 401:
                    failures.append(f"{op.label} with {scope}: {response.status_code}, not 401")
                continue
            verdict = _verdict(op, response, "allowed" if allowed else "forbidden")
            if verdict:
                failures.append(f"{op.label} with {scope} in its organisation: {verdict}")
            acting_elsewhere = {**headers, "X-Visiona-Org": other.org_id}
            url = await _url(op, other, other, fresh=False)
            response = await client.request(
                op.method, url, headers=acting_elsewhere, **_body(op, other)
            )
            verdict = _verdict(op, response, "not_found")
            if verdict:
                failures.append(f"{op.label} with {scope} in another organisation: {verdict}")
            if not _PARAM.search(op.path):
                continue
            url = await _url(op, other, own, fresh=False)
            response = await client.request(op.method, url, headers=headers, **_body(op, other))
            verdict = _verdict(op, response, "not_found" if allowed else "forbidden")
            if verdict:
                failures.append(f"{op.label} with {scope} on another's resource: {verdict}")
    assert not failures, "\n".join(failures)
