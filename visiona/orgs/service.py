"""Use cases of organisations, members and invitations. Never commits.

Rules (issue 22, DESIGN §4b):

- Every user has a personal organisation from sign-up (:func:`create_personal_org`,
  in the sign-up's transaction); anyone can create more (``POST /orgs``: the creator
  is its owner).
- An organisation the caller is not a member of is a 404, exactly like one that does
  not exist. A member whose role lacks the permission gets 403 ``forbidden``.
- Members are managed by ``admin`` and ``owner`` (:attr:`Permission.MEMBERS`); only
  an owner grants, changes or removes the ``owner`` role (:attr:`Permission.ORG`).
  The last owner cannot leave or be demoted (409 ``last_owner``). Anyone may leave
  (``DELETE /orgs/{id}/members/{their own id}``).
- An invitation names an email and a role (never ``owner``: ownership is granted to a
  member by an owner); its token (``vin_…``) is shown once and stored as sha256; it
  expires after 7 days, is revocable, and is accepted once, by a user signed in with
  that email.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.service import Actor
from visiona.kit.clock import utcnow
from visiona.kit.errors import AppError, ConflictError, ForbiddenError, NotFoundError
from visiona.kit.pagination import Page, PageRequest
from visiona.kit.tokens import INVITATION_PREFIX, hash_token, new_token
from visiona.orgs import repository
from visiona.orgs.permissions import Permission, Role, forbidden, permissions_of
from visiona.orgs.repository import Invitation, Member, MyOrg, Org

_LOGGER = logging.getLogger(__name__)

#: How long an invitation can be accepted.
INVITATION_TTL = timedelta(days=7)


class LastOwnerError(ConflictError):
    """The change would leave the organisation without an owner."""

    code = "last_owner"
    default_message = "The organisation's last owner cannot leave or be demoted."


class PersonalOrgError(ConflictError):
    """A personal organisation's owner cannot leave it (it is theirs)."""

    code = "personal_org"
    default_message = "A personal organisation's own user cannot leave it or be removed."


class AlreadyMemberError(ConflictError):
    """The invited user is a member already."""

    code = "already_member"
    default_message = "You are already a member of this organisation."


class InvitationInvalidError(AppError):
    """An invitation token that is unknown, used, revoked or expired."""

    status_code = 410
    code = "invitation_invalid"
    default_message = "This invitation is no longer valid (used, revoked or expired)."


class InvitationEmailMismatchError(ForbiddenError):
    """The invitation is for another email than the signed-in user's."""

    code = "invitation_email_mismatch"
    default_message = "This invitation is for another email; sign in with that email to accept it."


@dataclass(frozen=True, slots=True)
class Membership:
    """The caller's membership of an organisation (the org and their role)."""

    org: Org
    role: Role

    def require(self, permission: Permission) -> None:
        """403 ``forbidden`` naming ``permission`` unless the role holds it."""
        if permission not in permissions_of(self.role):
            raise forbidden(permission, self.role)


@dataclass(frozen=True, slots=True)
class IssuedInvitation:
    """A new invitation and its token (shown once)."""

    invitation: Invitation
    token: str


def _not_found() -> NotFoundError:
    return NotFoundError("Organisation not found.")


async def create_personal_org(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    label: str,
    now: datetime | None = None,
    *,
    record: bool = True,
) -> Org:
    """The personal organisation of a new user, with their owner membership; ``record``
    its ``org.created`` event (else the caller does, :func:`record_created`)."""
    now = now or utcnow()
    org = await repository.create_org(
        conn,
        org_id=uuid.uuid4(),
        name=f"{label} (personal)",
        personal=True,
        created_by=user_id,
        now=now,
    )
    await repository.add_member(conn, org.id, user_id, Role.OWNER, now)
    if record:
        await record_created(conn, org, user_id)
    return org


async def record_created(conn: AsyncConnection, org: Org, user_id: uuid.UUID) -> None:
    """Record ``org.created`` (by ``user_id``)."""
    await audit.record(
        conn, "org.created", actor=Actor.user(user_id), org_id=org.id, target_id=org.id,
        detail={"name": org.name, "personal": org.personal},
    )  # fmt: skip


async def personal_org_id(conn: AsyncConnection, user_id: uuid.UUID) -> uuid.UUID | None:
    """The user's personal organisation (None for a user without one)."""
    found = await repository.personal_org(conn, user_id)
    return None if found is None else found[0]


async def create_org(conn: AsyncConnection, user_id: uuid.UUID, name: str) -> MyOrg:
    """A new (team) organisation; its creator is the owner."""
    now = utcnow()
    org = await repository.create_org(
        conn, org_id=uuid.uuid4(), name=name, personal=False, created_by=user_id, now=now
    )
    await repository.add_member(conn, org.id, user_id, Role.OWNER, now)
    await audit.record(
        conn, "org.created", actor=Actor.user(user_id), org_id=org.id, target_id=org.id,
        detail={"name": name, "personal": False},
    )  # fmt: skip
    return MyOrg(org.id, org.name, org.personal, org.created_at, Role.OWNER)


async def list_my_orgs(conn: AsyncConnection, user_id: uuid.UUID, page: PageRequest) -> Page[MyOrg]:
    """The caller's organisations with their role."""
    return await repository.list_my_orgs(conn, user_id, page)


async def membership(conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID) -> Membership:
    """The caller's membership of ``org_id``; 404 when they are not a member."""
    role = await repository.role_of(conn, org_id, user_id)
    org = None if role is None else await repository.get_org(conn, org_id)
    if role is None or org is None:
        raise _not_found()
    return Membership(org, role)


async def list_members(
    conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID, page: PageRequest
) -> Page[Member]:
    """The organisation's members (every member may read them)."""
    (await membership(conn, org_id, user_id)).require(Permission.READ)
    return await repository.list_members(conn, org_id, page)


async def _target(conn: AsyncConnection, org_id: uuid.UUID, member_id: uuid.UUID) -> Member:
    member = await repository.get_member(conn, org_id, member_id)
    if member is None:
        raise NotFoundError("Member not found.")
    return member


async def _ensure_owner_left(conn: AsyncConnection, org_id: uuid.UUID) -> None:
    if await repository.count_owners(conn, org_id) <= 1:
        raise LastOwnerError()


async def set_role(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    actor_id: uuid.UUID,
    member_id: uuid.UUID,
    role: Role,
) -> Member:
    """Change a member's role (admins: below owner; owners: any); the last owner keeps it."""
    mine = await membership(conn, org_id, actor_id)
    mine.require(Permission.MEMBERS)
    await repository.lock_org(conn, org_id)
    member = await _target(conn, org_id, member_id)
    if Role.OWNER in (role, member.role):
        mine.require(Permission.ORG)
    if member.role == role:
        return member
    if member.role == Role.OWNER:
        await _ensure_owner_left(conn, org_id)
        if mine.org.personal and member_id == mine.org.created_by:
            raise PersonalOrgError("The owner of a personal organisation keeps the owner role.")
    await repository.set_role(conn, org_id, member_id, role, utcnow())
    await audit.record(
        conn, "member.role_changed", actor=Actor.user(actor_id), org_id=org_id,
        target_id=member_id, detail={"email": member.email, "from": member.role.value,
                                     "to": role.value},
    )  # fmt: skip
    return Member(member.user_id, member.email, member.name, role, member.created_at)


async def remove_member(
    conn: AsyncConnection, org_id: uuid.UUID, actor_id: uuid.UUID, member_id: uuid.UUID
) -> None:
    """Remove a member, or leave when ``member_id`` is the caller; the last owner stays."""
    mine = await membership(conn, org_id, actor_id)
    leaving = member_id == actor_id
    if not leaving:
        mine.require(Permission.MEMBERS)
    await repository.lock_org(conn, org_id)
    member = await _target(conn, org_id, member_id)
    if mine.org.personal and member_id == mine.org.created_by:
        raise PersonalOrgError()
    if member.role == Role.OWNER:
        if not leaving:
            mine.require(Permission.ORG)
        await _ensure_owner_left(conn, org_id)
    await repository.remove_member(conn, org_id, member_id)
    action = "member.left" if leaving else "member.removed"
    await audit.record(
        conn, action, actor=Actor.user(actor_id), org_id=org_id, target_id=member_id,
        detail={"email": member.email, "role": member.role.value},
    )  # fmt: skip


async def invite(
    conn: AsyncConnection, org_id: uuid.UUID, actor_id: uuid.UUID, email: str, role: Role
) -> IssuedInvitation:
    """A one-time invitation of ``email`` with ``role`` (its token shown once)."""
    (await membership(conn, org_id, actor_id)).require(Permission.MEMBERS)
    token = new_token(INVITATION_PREFIX)
    now = utcnow()
    invitation = await repository.insert_invitation(
        conn,
        invitation_id=uuid.uuid4(),
        org_id=org_id,
        email=email,
        role=role,
        token_hash=hash_token(token),
        created_by=actor_id,
        now=now,
        expires_at=now + INVITATION_TTL,
    )
    await audit.record(
        conn, "member.invited", actor=Actor.user(actor_id), org_id=org_id,
        target_id=invitation.id, detail={"email": email, "role": role.value},
    )  # fmt: skip
    return IssuedInvitation(invitation, token)


async def list_invitations(
    conn: AsyncConnection, org_id: uuid.UUID, actor_id: uuid.UUID, page: PageRequest
) -> Page[Invitation]:
    """The organisation's invitations, newest first (never their tokens)."""
    (await membership(conn, org_id, actor_id)).require(Permission.MEMBERS)
    return await repository.list_invitations(conn, org_id, page)


async def revoke_invitation(
    conn: AsyncConnection, org_id: uuid.UUID, actor_id: uuid.UUID, invitation_id: uuid.UUID
) -> None:
    """Revoke a pending invitation (404 when there is no pending one)."""
    (await membership(conn, org_id, actor_id)).require(Permission.MEMBERS)
    if not await repository.revoke_invitation(conn, org_id, invitation_id, utcnow()):
        raise NotFoundError("Invitation not found (or no longer pending).")
    await audit.record(
        conn, "invitation.revoked", actor=Actor.user(actor_id), org_id=org_id,
        target_id=invitation_id,
    )  # fmt: skip


async def accept(conn: AsyncConnection, user_id: uuid.UUID, user_email: str, token: str) -> MyOrg:
    """Join the invitation's organisation with its role (signed in as its email)."""
    invitation = await repository.invitation_by_hash(conn, hash_token(token))
    now = utcnow()
    if (
        invitation is None
        or invitation.accepted_at is not None
        or invitation.revoked_at is not None
        or invitation.expires_at <= now
    ):
        raise InvitationInvalidError()
    if invitation.email.lower() != user_email.lower():
        raise InvitationEmailMismatchError()
    if await repository.role_of(conn, invitation.org_id, user_id) is not None:
        raise AlreadyMemberError()
    org = await repository.get_org(conn, invitation.org_id)
    if org is None or not await repository.mark_accepted(conn, invitation.id, user_id, now):
        raise InvitationInvalidError()
    await repository.add_member(conn, org.id, user_id, invitation.role, now)
    await audit.record(
        conn, "member.joined", actor=Actor.user(user_id), org_id=org.id, target_id=user_id,
        detail={"invitation_id": str(invitation.id), "role": invitation.role.value,
                "email": user_email},
    )  # fmt: skip
    return MyOrg(org.id, org.name, org.personal, org.created_at, invitation.role)


@dataclass(frozen=True, slots=True)
class InvitationPreview:
    """What an invitation link says to the signed-in user before they accept it.

    ``state``: ``ok`` (they can accept), ``invalid`` (unknown, used, revoked or
    expired), ``mismatch`` (for another email), ``member`` (a member already). The
    organisation, role and invited email are only given when the token is valid.
    """

    state: str
    org_name: str | None = None
    role: Role | None = None
    email: str | None = None


async def invitation_preview(
    conn: AsyncConnection, user_id: uuid.UUID, user_email: str, token: str
) -> InvitationPreview:
    """What accepting ``token`` would do for the user (the checks of :func:`accept`,
    read only)."""
    invitation = await repository.invitation_by_hash(conn, hash_token(token)) if token else None
    if (
        invitation is None
        or invitation.accepted_at is not None
        or invitation.revoked_at is not None
        or invitation.expires_at <= utcnow()
    ):
        return InvitationPreview("invalid")
    org = await repository.get_org(conn, invitation.org_id)
    if org is None:
        return InvitationPreview("invalid")
    if invitation.email.lower() != user_email.lower():
        state = "mismatch"
    elif await repository.role_of(conn, org.id, user_id) is not None:
        state = "member"
    else:
        state = "ok"
    return InvitationPreview(state, org.name, invitation.role, invitation.email)
