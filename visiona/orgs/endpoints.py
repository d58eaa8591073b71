"""HTTP routes of organisations, members and invitations (HTTP in/out only).

The routes under ``/orgs/{id}`` act in the organisation of the path (the
``X-Visiona-Org`` header plays no part there): a caller who is not a member gets 404,
exactly as for an organisation that does not exist. Reading an organisation and its
members needs ``read`` (every role); members and invitations need ``members`` (admin,
owner); anything touching the ``owner`` role needs ``org`` (owner). A change of a
membership is committed first, then every node forgets the member's cached role
(:class:`visiona.orgs.access.Memberships`).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Response, status

from visiona.auth import repository as users
from visiona.auth.dependencies import CurrentCaller
from visiona.kit.clock import utcnow
from visiona.kit.deps import Conn, DatabaseDep
from visiona.kit.errors import (
    CsrfError,
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
    ValidationFailedError,
)
from visiona.kit.http import error_responses
from visiona.kit.pagination import PageParams
from visiona.orgs import service
from visiona.orgs.dependencies import MembershipsDep
from visiona.orgs.permissions import Permission
from visiona.orgs.repository import Invitation, MyOrg
from visiona.orgs.schemas import (
    InvitationAccept,
    InvitationCreate,
    InvitationCreated,
    InvitationList,
    InvitationOut,
    MemberList,
    MemberOut,
    OrgCreate,
    OrgList,
    OrgOut,
    RoleChange,
)

_LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["organisations"])
_NO_CONTENT: dict[str, Any] = {
    "status_code": status.HTTP_204_NO_CONTENT,
    "response_class": Response,
}


def _needs(permission: Permission) -> dict[str, Any]:
    """The OpenAPI note of the permission a route under ``/orgs/{id}`` checks itself."""
    return {"x-visiona-permission": permission.value, "x-visiona-org": "path"}


def _org(org: MyOrg) -> OrgOut:
    return OrgOut(
        id=org.id,
        name=org.name,
        personal=org.personal,
        role=org.role.value,
        created_at=org.created_at,
    )


def _invitation_state(invitation: Invitation) -> str:
    if invitation.accepted_at is not None:
        return "accepted"
    if invitation.revoked_at is not None:
        return "revoked"
    return "expired" if invitation.expires_at <= utcnow() else "pending"


def _invitation(invitation: Invitation) -> InvitationOut:
    return InvitationOut(
        id=invitation.id,
        email=invitation.email,
        role=invitation.role.value,
        created_at=invitation.created_at,
        expires_at=invitation.expires_at,
        accepted_at=invitation.accepted_at,
        revoked_at=invitation.revoked_at,
        state=_invitation_state(invitation),
    )


@router.get(
    "/orgs",
    response_model=OrgList,
    summary="Your organisations",
    responses=error_responses(UnauthorizedError, ValidationFailedError),
)
async def list_orgs(caller: CurrentCaller, conn: Conn, page: PageParams) -> OrgList:
    """The organisations you belong to, with your role in each (your personal one first)."""
    found = await service.list_my_orgs(conn, caller.user_id, page)
    return OrgList(items=[_org(org) for org in found.items], next_cursor=found.next_cursor)


@router.post(
    "/orgs",
    status_code=status.HTTP_201_CREATED,
    response_model=OrgOut,
    summary="Create an organisation",
    responses=error_responses(UnauthorizedError, CsrfError, ValidationFailedError),
)
async def create_org(body: OrgCreate, caller: CurrentCaller, conn: Conn) -> OrgOut:
    """A new organisation; you are its owner. Act in it with `X-Visiona-Org: <id>`."""
    return _org(await service.create_org(conn, caller.user_id, body.name))


@router.get(
    "/orgs/{org_id}",
    response_model=OrgOut,
    summary="One of your organisations",
    openapi_extra=_needs(Permission.READ),
    responses=error_responses(UnauthorizedError, NotFoundError),
)
async def get_org(org_id: uuid.UUID, caller: CurrentCaller, conn: Conn) -> OrgOut:
    """The organisation and your role; not a member (or no such organisation) → 404."""
    mine = await service.membership(conn, org_id, caller.user_id)
    org = mine.org
    return _org(MyOrg(org.id, org.name, org.personal, org.created_at, mine.role))


@router.get(
    "/orgs/{org_id}/members",
    response_model=MemberList,
    summary="Members of an organisation",
    openapi_extra=_needs(Permission.READ),
    responses=error_responses(UnauthorizedError, NotFoundError, ValidationFailedError),
)
async def list_members(
    org_id: uuid.UUID, caller: CurrentCaller, conn: Conn, page: PageParams
) -> MemberList:
    """Every member with their role, in the order they joined (any member may read)."""
    found = await service.list_members(conn, org_id, caller.user_id, page)
    return MemberList(
        items=[MemberOut.model_validate(m) for m in found.items], next_cursor=found.next_cursor
    )


@router.patch(
    "/orgs/{org_id}/members/{user_id}",
    response_model=MemberOut,
    summary="Change a member's role",
    openapi_extra=_needs(Permission.MEMBERS),
    responses=error_responses(
        UnauthorizedError,
        CsrfError,
        ForbiddenError,
        NotFoundError,
        service.LastOwnerError,
        service.PersonalOrgError,
        ValidationFailedError,
    ),
)
async def set_role(  # noqa: PLR0917 - FastAPI injects each by name
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    body: RoleChange,
    caller: CurrentCaller,
    db: DatabaseDep,
    memberships: MembershipsDep,
) -> MemberOut:
    """Admins change roles below owner; only an owner grants, changes or takes `owner`.
    The last owner cannot be demoted (409 `last_owner`). Takes effect within a second on
    every node."""
    # unit of work: its own, so every node forgets the old role only after the commit
    async with db.transaction() as conn:
        member = await service.set_role(conn, org_id, caller.user_id, user_id, body.role)
    await memberships.changed(user_id)
    return MemberOut.model_validate(member)


@router.delete(
    "/orgs/{org_id}/members/{user_id}",
    **_NO_CONTENT,
    summary="Remove a member, or leave",
    openapi_extra=_needs(Permission.MEMBERS),
    responses=error_responses(
        UnauthorizedError,
        CsrfError,
        ForbiddenError,
        NotFoundError,
        service.LastOwnerError,
        service.PersonalOrgError,
    ),
)
async def remove_member(
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    caller: CurrentCaller,
    db: DatabaseDep,
    memberships: MembershipsDep,
) -> Response:
    """Remove the member (admins; an owner only by an owner), or leave when `user_id` is
    yours (any member). The last owner cannot leave (409 `last_owner`), nor anyone their
    own personal organisation (409 `personal_org`)."""
    # unit of work: its own, so every node forgets the membership only after the commit
    async with db.transaction() as conn:
        await service.remove_member(conn, org_id, caller.user_id, user_id)
    await memberships.changed(user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/orgs/{org_id}/invitations",
    status_code=status.HTTP_201_CREATED,
    response_model=InvitationCreated,
    summary="Invite someone",
    openapi_extra=_needs(Permission.MEMBERS),
    responses=error_responses(
        UnauthorizedError, CsrfError, ForbiddenError, NotFoundError, ValidationFailedError
    ),
)
async def invite(
    org_id: uuid.UUID, body: InvitationCreate, caller: CurrentCaller, conn: Conn
) -> InvitationCreated:
    """A one-time invitation of `email` with `role` (admin, operator or viewer), valid 7
    days. Its `token` (`vin_…`) is in this response only: hand it to the invitee, who
    accepts it signed in with that email (`POST /invitations/accept`). No mail is sent."""
    issued = await service.invite(conn, org_id, caller.user_id, body.email, body.role)
    shown = _invitation(issued.invitation)
    return InvitationCreated(**shown.model_dump(), token=issued.token)


@router.get(
    "/orgs/{org_id}/invitations",
    response_model=InvitationList,
    summary="Invitations of an organisation",
    openapi_extra=_needs(Permission.MEMBERS),
    responses=error_responses(
        UnauthorizedError, ForbiddenError, NotFoundError, ValidationFailedError
    ),
)
async def list_invitations(
    org_id: uuid.UUID, caller: CurrentCaller, conn: Conn, page: PageParams
) -> InvitationList:
    """Every invitation, newest first, with its state; never a token."""
    found = await service.list_invitations(conn, org_id, caller.user_id, page)
    return InvitationList(
        items=[_invitation(i) for i in found.items], next_cursor=found.next_cursor
    )


@router.delete(
    "/orgs/{org_id}/invitations/{invitation_id}",
    **_NO_CONTENT,
    summary="Revoke an invitation",
    openapi_extra=_needs(Permission.MEMBERS),
    responses=error_responses(UnauthorizedError, CsrfError, ForbiddenError, NotFoundError),
)
async def revoke_invitation(
    org_id: uuid.UUID, invitation_id: uuid.UUID, caller: CurrentCaller, conn: Conn
) -> Response:
    """Revoke a pending invitation (an accepted, revoked or unknown one → 404)."""
    await service.revoke_invitation(conn, org_id, caller.user_id, invitation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/invitations/accept",
    response_model=OrgOut,
    summary="Accept an invitation",
    responses=error_responses(
        UnauthorizedError,
        CsrfError,
        service.InvitationEmailMismatchError,
        service.AlreadyMemberError,
        service.InvitationInvalidError,
        ValidationFailedError,
    ),
)
async def accept_invitation(
    body: InvitationAccept, caller: CurrentCaller, db: DatabaseDep, memberships: MembershipsDep
) -> OrgOut:
    """Join the invitation's organisation with its role. You must be signed in with the
    invited email (else 403 `invitation_email_mismatch`); a used, revoked, expired or
    unknown token → 410 `invitation_invalid`; a member already → 409 `already_member`."""
    # unit of work: its own, so every node forgets "not a member" only after the commit
    async with db.transaction() as conn:
        user = await users.get_by_id(conn, caller.user_id)
        if user is None:
            raise UnauthorizedError("Session expired or not valid.")
        joined = await service.accept(conn, user.id, user.email, body.token)
    await memberships.changed(caller.user_id)
    _LOGGER.info("user %s joined organisation %s", caller.user_id, joined.id)
    return _org(joined)
