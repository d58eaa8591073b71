"""Use cases of API keys. Never commits.

Rules (issue 22 item 4, DESIGN §4b):

- A key belongs to one organisation and acts only there. It has a name, scopes
  (:data:`SCOPES`) and an expiry of 1 to 365 days; its plaintext (``vak_…``) is shown
  once and stored as sha256, with its first characters (``prefix``) kept to recognise it.
- A key is never given more than its creator holds: every permission of its scopes must
  be one of the creator's (403 ``scope_not_allowed`` otherwise). While used, a key
  holds its scopes' permissions intersected with its creator's current role (a demoted
  creator's keys lose power; a creator who left the organisation has dead keys).
- Creating, listing and revoking keys needs :attr:`Permission.API_KEYS` (admin, owner,
  or a key with the ``admin`` scope).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.apikeys import repository
from visiona.apikeys.repository import ApiKey
from visiona.audit import service as audit
from visiona.audit.service import Actor
from visiona.kit.clock import utcnow
from visiona.kit.errors import ForbiddenError, NotFoundError
from visiona.kit.pagination import Page, PageRequest
from visiona.kit.tokens import API_KEY_PREFIX, hash_token, new_token
from visiona.orgs.permissions import SCOPE_PERMISSIONS, Permission, scopes_permissions

_LOGGER = logging.getLogger(__name__)

#: Every scope a key may carry, in the order the docs list them.
SCOPES: tuple[str, ...] = tuple(SCOPE_PERMISSIONS)
#: Characters of the plaintext kept to recognise a key (``vak_`` and 8 random ones).
PREFIX_LENGTH = len(API_KEY_PREFIX) + 1 + 8
#: The longest life of a key.
MAX_DAYS = 365


class ScopeNotAllowedError(ForbiddenError):
    """A key asked for a scope its creator does not hold."""

    code = "scope_not_allowed"
    default_message = "An API key cannot hold more than its creator's role allows."


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key and its plaintext (shown once)."""

    key: ApiKey
    plaintext: str


async def create_key(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    created_by: uuid.UUID,
    held: frozenset[Permission],
    actor: Actor,
    name: str,
    scopes: list[str],
    expires_in_days: int,
) -> IssuedKey:
    """A new key of ``org_id`` with ``scopes`` (each within ``held``: the creator's)."""
    wanted = tuple(sorted(set(scopes)))
    missing = scopes_permissions(set(wanted)) - held
    if missing:
        names = ", ".join(sorted(p.value for p in missing))
        raise ScopeNotAllowedError(
            f"An API key cannot hold more than its creator's role allows (missing: {names})."
        )
    plaintext = new_token(API_KEY_PREFIX)
    now = utcnow()
    key = await repository.insert_key(
        conn,
        key_id=uuid.uuid4(),
        org_id=org_id,
        created_by=created_by,
        name=name,
        prefix=plaintext[:PREFIX_LENGTH],
        key_hash=hash_token(plaintext),
        scopes=wanted,
        now=now,
        expires_at=now + timedelta(days=expires_in_days),
    )
    await audit.record(
        conn, "api_key.created", actor=actor, org_id=org_id, target_id=key.id,
        owner_id=created_by,
        detail={"name": name, "scopes": list(wanted), "expires_at": key.expires_at.isoformat()},
    )  # fmt: skip
    return IssuedKey(key, plaintext)


async def list_keys(conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest) -> Page[ApiKey]:
    """The organisation's keys, newest first (never a plaintext nor a hash)."""
    return await repository.list_keys(conn, org_id, page)


async def revoke_key(
    conn: AsyncConnection, org_id: uuid.UUID, key_id: uuid.UUID, *, actor: Actor
) -> ApiKey:
    """Revoke the key (idempotent for a revoked one); another organisation's → 404."""
    key = await repository.get_key(conn, org_id, key_id)
    if key is None:
        raise NotFoundError("API key not found.")
    if await repository.revoke_key(conn, org_id, key_id, utcnow()):
        await audit.record(
            conn, "api_key.revoked", actor=actor, org_id=org_id, target_id=key_id,
            owner_id=key.created_by, detail={"name": key.name},
        )  # fmt: skip
    return key
