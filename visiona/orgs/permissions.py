"""The permission matrix, written once: roles, permissions, and what each role may do.

Roles nest: ``owner`` ⊇ ``admin`` ⊇ ``operator`` ⊇ ``viewer``. Every route that acts
in an organisation names the one :class:`Permission` it needs
(``visiona.auth.dependencies.requires``); a member whose role lacks it gets 403
``forbidden`` naming the permission. The table in docs/api-spec.md ("Roles and
permissions") is generated from :data:`ROLE_PERMISSIONS` by :func:`markdown_table`
(a test keeps the two equal).

Why a viewer may not download model files: a model file is the team's work product
(often the most valuable thing in the organisation) and a download is a copy that can
leave the organisation; its metadata (name, chip, size, sha256, labels) is enough to
audit or reproduce a deployment. Proxying and TCP forwards reach into the devices'
PCs, which is operating them, not reading.
"""

from __future__ import annotations

from enum import StrEnum

from visiona.kit.errors import ForbiddenError


class Role(StrEnum):
    """A member's role in an organisation, weakest last."""

    OWNER = "owner"
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Permission(StrEnum):
    """What a route needs (one per route)."""

    READ = "read"
    DEVICES_WRITE = "devices:write"
    MODELS_WRITE = "models:write"
    MODELS_DOWNLOAD = "models:download"
    DEPLOY = "deploy"
    PROXY = "proxy"
    MEMBERS = "members"
    ENROLLMENT = "enrollment"
    API_KEYS = "api_keys"
    WEBHOOKS = "webhooks"
    ORG = "org"


#: What each permission covers, for the docs table.
DESCRIPTIONS: dict[Permission, str] = {
    Permission.READ: "list and read devices, tokens, models, deployments, rollouts, "
    "audit events, the organisation and its members",
    Permission.DEVICES_WRITE: "pairing tokens, register, rename and unpair devices, "
    "revoke session tokens",
    Permission.MODELS_WRITE: "upload, edit, replace and delete models",
    Permission.MODELS_DOWNLOAD: "download model files",
    Permission.DEPLOY: "deploy a model to a device; create, pause, resume, cancel and "
    "roll back rollouts",
    Permission.PROXY: "HTTP proxy and TCP forwards to a device",
    Permission.MEMBERS: "invite, change roles (below owner), remove members, "
    "list and revoke invitations",
    Permission.ENROLLMENT: "create, list and revoke enrollment keys (a key pairs PCs "
    "into the organisation without anyone present)",
    Permission.API_KEYS: "create, list and revoke the organisation's API keys",
    Permission.WEBHOOKS: "create, list, edit, test and delete webhook endpoints and "
    "read their delivery logs",
    Permission.ORG: "the organisation itself: grant, change or remove the owner role",
}

_VIEWER = frozenset({Permission.READ})
_OPERATOR = _VIEWER | {
    Permission.DEVICES_WRITE,
    Permission.MODELS_WRITE,
    Permission.MODELS_DOWNLOAD,
    Permission.DEPLOY,
    Permission.PROXY,
}
_ADMIN = _OPERATOR | {
    Permission.MEMBERS,
    Permission.ENROLLMENT,
    Permission.API_KEYS,
    Permission.WEBHOOKS,
}
_OWNER = _ADMIN | {Permission.ORG}

#: The matrix: role → the permissions it holds.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.OWNER: _OWNER,
    Role.ADMIN: _ADMIN,
    Role.OPERATOR: _OPERATOR,
    Role.VIEWER: _VIEWER,
}

#: API key scopes (DESIGN §4b) → the permissions a key with that scope holds; a key
#: holds the union of its scopes' (never more than its creator's role, checked when the
#: key is made). For the API keys of issue 22 item 4.
SCOPE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "read": frozenset({Permission.READ}),
    "devices:write": frozenset({Permission.READ, Permission.DEVICES_WRITE}),
    "models:write": frozenset(
        {Permission.READ, Permission.MODELS_WRITE, Permission.MODELS_DOWNLOAD}
    ),
    "deploy": frozenset({Permission.READ, Permission.DEPLOY}),
    "proxy": frozenset({Permission.READ, Permission.PROXY}),
    "admin": _ADMIN,
}


def permissions_of(role: Role) -> frozenset[Permission]:
    """The permissions ``role`` holds."""
    return ROLE_PERMISSIONS[role]


def scopes_permissions(scopes: frozenset[str] | set[str]) -> frozenset[Permission]:
    """The union of ``scopes``' permissions (unknown scopes give none)."""
    found: frozenset[Permission] = frozenset()
    for scope in scopes:
        found |= SCOPE_PERMISSIONS.get(scope, frozenset())
    return found


def at_least(role: Role, other: Role) -> bool:
    """Whether ``role`` holds every permission of ``other``."""
    return ROLE_PERMISSIONS[other] <= ROLE_PERMISSIONS[role]


def forbidden(permission: Permission, role: Role | None) -> ForbiddenError:
    """The 403 ``forbidden`` of a role (None: an API key) lacking ``permission``."""
    who = f"the {role.value} role" if role is not None else "this API key"
    return ForbiddenError(f"Permission {permission.value!r} is required; {who} does not have it.")


def markdown_table() -> str:
    """The docs table of the matrix (docs/api-spec.md, "Roles and permissions")."""
    roles = list(Role)
    lines = [
        "| permission | covers | " + " | ".join(f"`{r}`" for r in roles) + " |",
        "|---|---|" + "---|" * len(roles),
    ]
    for permission in Permission:
        marks = " | ".join("✓" if permission in ROLE_PERMISSIONS[r] else "" for r in roles)
        lines.append(f"| `{permission}` | {DESCRIPTIONS[permission]} | {marks} |")
    return "\n".join(lines) + "\n"
