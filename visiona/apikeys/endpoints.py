"""HTTP routes of API keys (HTTP in/out only).

Each route needs :attr:`Permission.API_KEYS` (admin, owner, or a key with the ``admin``
scope) in the organisation the request acts in. Revocation opens its own unit of work
so that every node forgets the key only after the commit.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response, status

from visiona.apikeys import service
from visiona.apikeys.dependencies import ApiKeysDep
from visiona.apikeys.repository import ApiKey
from visiona.apikeys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyList, ApiKeyOut
from visiona.auth.dependencies import Principal, require
from visiona.kit.clock import utcnow
from visiona.kit.deps import Conn, DatabaseDep
from visiona.kit.errors import CsrfError, NotFoundError, UnauthorizedError, ValidationFailedError
from visiona.kit.http import error_responses
from visiona.kit.pagination import PageParams
from visiona.orgs.permissions import Permission

_LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["API keys"])
_NO_CONTENT: dict[str, Any] = {
    "status_code": status.HTTP_204_NO_CONTENT,
    "response_class": Response,
}
KeyAdmin = Annotated[Principal, Depends(require(Permission.API_KEYS))]


def _state(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return "revoked"
    return "expired" if key.expires_at <= utcnow() else "active"


def _out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=list(key.scopes),
        created_by=key.created_by,
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
        state=_state(key),
    )


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    summary="Create an API key",
    responses=error_responses(
        UnauthorizedError, CsrfError, service.ScopeNotAllowedError, ValidationFailedError
    ),
)
async def create_key(body: ApiKeyCreate, principal: KeyAdmin, conn: Conn) -> ApiKeyCreated:
    """A key of the organisation you act in, for automation: use it as
    `Authorization: Bearer vak_…`. Its `key` is in this response only (stored as
    sha256). It acts in this organisation only, with its scopes' permissions within its
    creator's role; it cannot be given a scope beyond your own role (403
    `scope_not_allowed`)."""
    issued = await service.create_key(
        conn,
        org_id=principal.org_id,
        created_by=principal.user_id,
        held=principal.permissions,
        actor=principal.audit_actor,
        name=body.name,
        scopes=list(body.scopes),
        expires_in_days=body.expires_in_days,
    )
    _LOGGER.info("API key %s created in organisation %s", issued.key.id, principal.org_id)
    return ApiKeyCreated(**_out(issued.key).model_dump(), key=issued.plaintext)


@router.get(
    "/api-keys",
    response_model=ApiKeyList,
    summary="API keys of the organisation",
    responses=error_responses(UnauthorizedError, ValidationFailedError),
)
async def list_keys(principal: KeyAdmin, conn: Conn, page: PageParams) -> ApiKeyList:
    """Every key of the organisation, newest first, revoked and expired ones too; never
    a key nor its hash."""
    found = await service.list_keys(conn, principal.org_id, page)
    return ApiKeyList(items=[_out(k) for k in found.items], next_cursor=found.next_cursor)


@router.delete(
    "/api-keys/{key_id}",
    **_NO_CONTENT,
    summary="Revoke an API key",
    responses=error_responses(UnauthorizedError, CsrfError, NotFoundError),
)
async def revoke_key(
    key_id: uuid.UUID, principal: KeyAdmin, db: DatabaseDep, keys: ApiKeysDep
) -> Response:
    """Revoke the key (idempotent); every node refuses it within a second. Another
    organisation's key → 404."""
    # unit of work: its own, so every node forgets the key only after the commit
    async with db.transaction() as conn:
        await service.revoke_key(conn, principal.org_id, key_id, actor=principal.audit_actor)
    await keys.revoked(key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
