"""HTTP routes for pairing tokens and device session tokens (HTTP in/out only).

Session-token revocation opens its unit of work here, explicitly, so that
the revocation hooks (the tunnel's, to close a live tunnel) runs only after
the revocation has committed. The other routes use the per-request unit of work.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Response, status

from visiona.auth.dependencies import CurrentPrincipal, DeviceWriter
from visiona.devices import service as devices
from visiona.kit.deps import Conn, DatabaseDep, DeviceRevokedDep, SettingsDep
from visiona.kit.errors import CsrfError, NotFoundError, UnauthorizedError, ValidationFailedError
from visiona.kit.http import error_responses
from visiona.kit.pagination import PageParams
from visiona.tokens import service
from visiona.tokens.repository import PairingToken, SessionToken
from visiona.tokens.schemas import (
    PairingTokenCreate,
    PairingTokenCreated,
    PairingTokenList,
    PairingTokenOut,
    SessionTokenList,
    SessionTokenOut,
)

_LOGGER = logging.getLogger(__name__)

router = APIRouter()
_NO_CONTENT: dict[str, Any] = {
    "status_code": status.HTTP_204_NO_CONTENT,
    "response_class": Response,
}


def _pairing(token: PairingToken) -> PairingTokenOut:
    return PairingTokenOut(
        id=str(token.public_id),
        created_at=token.created_at,
        expires_at=token.expires_at,
        used_at=token.used_at,
        revoked_at=token.revoked_at,
        device_id=token.device_id,
    )


def _session(token: SessionToken) -> SessionTokenOut:
    return SessionTokenOut(
        id=str(token.public_id),
        device_id=token.device_id,
        pairing_token_id=None if token.pairing_token_id is None else str(token.pairing_token_id),
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
    )


# -- session tokens -------------------------------------------------------------


@router.get(
    "/devices/{device_id}/session-tokens",
    response_model=SessionTokenList,
    tags=["session tokens"],
    summary="A device's session tokens",
    responses=error_responses(UnauthorizedError, NotFoundError, ValidationFailedError),
)
async def list_session_tokens(
    device_id: uuid.UUID,
    principal: CurrentPrincipal,
    conn: Conn,
    page: PageParams,
) -> SessionTokenList:
    """The device's agent session tokens, revoked ones included; never the plaintext."""
    await devices.require_device(conn, principal.org_id, device_id)  # not yours or deleted: 404
    found = await service.list_session_tokens(conn, principal.org_id, device_id, page)
    return SessionTokenList(
        items=[_session(token) for token in found.items], next_cursor=found.next_cursor
    )


@router.delete(
    "/session-tokens/{token_id}",
    **_NO_CONTENT,
    tags=["session tokens"],
    summary="Revoke a session token",
    responses=error_responses(UnauthorizedError, CsrfError, NotFoundError),
)
async def revoke_session_token(
    token_id: str, principal: DeviceWriter, db: DatabaseDep, revoked: DeviceRevokedDep
) -> Response:
    """Revoke the token (idempotent) and close the live tunnel of its device."""
    # unit of work: its own, so the revocation hooks run after the commit
    async with db.transaction() as conn:
        device_id = await service.revoke_session_token(
            conn, principal.org_id, principal.user_id, token_id, actor=principal.audit_actor
        )
    _LOGGER.info("a session token of device %s was revoked", device_id)
    await revoked(device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- pairing tokens -------------------------------------------------------------


@router.post(
    "/pairing-tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=PairingTokenCreated,
    tags=["pairing tokens"],
    summary="Create a pairing token",
    responses=error_responses(UnauthorizedError, CsrfError, ValidationFailedError),
)
async def create_pairing_token(
    principal: DeviceWriter,
    conn: Conn,
    settings: SettingsDep,
    body: PairingTokenCreate | None = None,
) -> PairingTokenCreated:
    """A one-time token for `visiona agent --token`. The plaintext is in this response
    only; it expires after `ttl_seconds` (default 900, at most the configured maximum)."""
    ttl = service.pairing_ttl(settings, body.ttl_seconds if body else None)
    issued = await service.create_pairing_token(
        conn, principal.org_id, principal.user_id, ttl, actor=principal.audit_actor
    )
    return PairingTokenCreated(id=issued.id, token=issued.token, expires_at=issued.expires_at)


@router.get(
    "/pairing-tokens",
    response_model=PairingTokenList,
    tags=["pairing tokens"],
    summary="List your pairing tokens",
    responses=error_responses(UnauthorizedError, ValidationFailedError),
)
async def list_pairing_tokens(
    principal: CurrentPrincipal,
    conn: Conn,
    page: PageParams,
) -> PairingTokenList:
    """Your pairing tokens, used and revoked ones included; never the plaintext."""
    found = await service.list_pairing_tokens(conn, principal.org_id, page)
    return PairingTokenList(
        items=[_pairing(token) for token in found.items], next_cursor=found.next_cursor
    )


@router.delete(
    "/pairing-tokens/{token_id}",
    **_NO_CONTENT,
    tags=["pairing tokens"],
    summary="Revoke a pairing token",
    responses=error_responses(UnauthorizedError, CsrfError, NotFoundError),
)
async def revoke_pairing_token(token_id: str, principal: DeviceWriter, conn: Conn) -> Response:
    """Revoke the token (idempotent); it can no longer be exchanged."""
    await service.revoke_pairing_token(
        conn, principal.org_id, principal.user_id, token_id, actor=principal.audit_actor
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
