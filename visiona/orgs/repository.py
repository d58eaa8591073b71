"""SQL for organisations, memberships and invitations. Takes a connection; never commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.records import AnyRow
from visiona.kit.schema import invitations, memberships, organizations, users
from visiona.orgs.permissions import Role

_o, _m, _i, _u = organizations.c, memberships.c, invitations.c, users.c


@dataclass(frozen=True, slots=True)
class Org:
    """An organisation."""

    id: uuid.UUID
    name: str
    personal: bool
    created_at: datetime
    #: who created it (a personal organisation's user)
    created_by: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class MyOrg:
    """An organisation as one of its members sees it: with their role."""

    id: uuid.UUID
    name: str
    personal: bool
    created_at: datetime
    role: Role


@dataclass(frozen=True, slots=True)
class Member:
    """A member of an organisation."""

    user_id: uuid.UUID
    email: str
    name: str
    role: Role
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Invitation:
    """An invitation (never its token: only the hash is stored)."""

    id: uuid.UUID
    org_id: uuid.UUID
    email: str
    role: Role
    created_by: uuid.UUID | None
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None


_ORG = select(_o.id, _o.name, _o.personal, _o.created_at, _o.created_by)
_GET_ORG = _ORG.where(_o.id == bindparam("org_id"))
_ROLE = select(_m.role).where(_m.org_id == bindparam("org_id"), _m.user_id == bindparam("user_id"))
_PERSONAL = (
    select(_m.org_id, _m.role)
    .join(organizations, _o.id == _m.org_id)
    .where(
        _m.user_id == bindparam("user_id"),
        _o.personal.is_(True),
        _o.created_by == bindparam("user_id"),
    )
    .order_by(_o.created_at)
    .limit(1)
)
_MY_ORGS = select(
    _o.id, _o.name, _o.personal, _o.created_at, _m.role, _m.created_at, _m.org_id
).join(memberships, _m.org_id == _o.id)
_MY_ORDER = Keyset(_m.created_at, _m.org_id, parse_key=uuid.UUID)
_MEMBERS = select(_m.user_id, _u.email, _u.name, _m.role, _m.created_at).join(
    users, _u.id == _m.user_id
)
_MEMBER_ORDER = Keyset(_m.created_at, _m.user_id, parse_key=uuid.UUID)
_OWNERS = select(func.count()).where(_m.org_id == bindparam("org_id"), _m.role == Role.OWNER)
# UPDATE statements bind names no column has (SQLAlchemy reserves those for SET).
_SET_ROLE = (
    update(memberships)
    .where(_m.org_id == bindparam("org"), _m.user_id == bindparam("member"))
    .values(role=bindparam("new_role"), updated_at=bindparam("now"))
)
_REMOVE = delete(memberships).where(
    _m.org_id == bindparam("org_id"), _m.user_id == bindparam("user_id")
)
_INVITATION = select(
    _i.id,
    _i.org_id,
    _i.email,
    _i.role,
    _i.created_by,
    _i.created_at,
    _i.expires_at,
    _i.accepted_at,
    _i.revoked_at,
)
_INVITATION_ORDER = Keyset(_i.created_at, _i.id, descending=True, parse_key=uuid.UUID)
_BY_HASH = _INVITATION.where(_i.token_hash == bindparam("token_hash"))
_REVOKE = (
    update(invitations)
    .where(
        _i.id == bindparam("invitation"),
        _i.org_id == bindparam("org"),
        _i.accepted_at.is_(None),
        _i.revoked_at.is_(None),
    )
    .values(revoked_at=bindparam("now"))
    .returning(_i.id)
)
_ACCEPT = (
    update(invitations)
    .where(_i.id == bindparam("invitation"), _i.accepted_at.is_(None), _i.revoked_at.is_(None))
    .values(accepted_at=bindparam("now"), accepted_by=bindparam("member"))
    .returning(_i.id)
)


def _org(row: AnyRow) -> Org:
    id_, name, personal, created_at, created_by = row
    return Org(id_, name, bool(personal), created_at, created_by)


def _my_org(row: AnyRow) -> MyOrg:
    id_, name, personal, created_at, role, _joined, _key = row
    return MyOrg(id_, name, bool(personal), created_at, Role(role))


def _member(row: AnyRow) -> Member:
    user_id, email, name, role, created_at = row
    return Member(user_id, email, name, Role(role), created_at)


def _invitation(row: AnyRow) -> Invitation:
    id_, org_id, email, role, created_by, created_at, expires_at, accepted, revoked = row
    return Invitation(
        id_, org_id, email, Role(role), created_by, created_at, expires_at, accepted, revoked
    )


async def create_org(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    name: str,
    personal: bool,
    created_by: uuid.UUID,
    now: datetime,
) -> Org:
    """Insert an organisation (no member yet: :func:`add_member`)."""
    values = {
        "id": org_id,
        "name": name,
        "personal": personal,
        "created_by": created_by,
        "created_at": now,
        "updated_at": now,
    }
    await conn.execute(insert(organizations), values)
    return Org(org_id, name, personal, now, created_by)


async def add_member(
    conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID, role: Role, now: datetime
) -> None:
    """Make ``user_id`` a member with ``role`` (a member already: 409 via the primary key)."""
    values = {
        "org_id": org_id,
        "user_id": user_id,
        "role": role.value,
        "created_at": now,
        "updated_at": now,
    }
    await conn.execute(insert(memberships), values)


async def get_org(conn: AsyncConnection, org_id: uuid.UUID) -> Org | None:
    """The organisation ``org_id``."""
    row = (await conn.execute(_GET_ORG, {"org_id": org_id})).one_or_none()
    return _org(row) if row else None


async def lock_org(conn: AsyncConnection, org_id: uuid.UUID) -> None:
    """Serialise membership changes of one organisation (PostgreSQL row lock; SQLite's
    write transactions are serial already): the last-owner rule reads then writes."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(_o.id).where(_o.id == org_id).with_for_update())


async def role_of(conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID) -> Role | None:
    """``user_id``'s role in ``org_id`` (None: not a member)."""
    found = (await conn.execute(_ROLE, {"org_id": org_id, "user_id": user_id})).scalar()
    return None if found is None else Role(found)


async def personal_org(conn: AsyncConnection, user_id: uuid.UUID) -> tuple[uuid.UUID, Role] | None:
    """The user's personal organisation and their role in it."""
    row = (await conn.execute(_PERSONAL, {"user_id": user_id})).one_or_none()
    return None if row is None else (row[0], Role(row[1]))


async def list_my_orgs(conn: AsyncConnection, user_id: uuid.UUID, page: PageRequest) -> Page[MyOrg]:
    """The organisations ``user_id`` belongs to, in the order they joined."""
    stmt = _MY_ORGS.where(_m.user_id == user_id)
    return await paginate(conn, stmt, _MY_ORDER, page, _my_org)


async def list_members(conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest) -> Page[Member]:
    """The members of ``org_id``, in the order they joined."""
    stmt = _MEMBERS.where(_m.org_id == org_id)
    return await paginate(conn, stmt, _MEMBER_ORDER, page, _member)


async def get_member(conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID) -> Member | None:
    """One member of ``org_id``."""
    stmt = _MEMBERS.where(_m.org_id == org_id, _m.user_id == user_id)
    row = (await conn.execute(stmt)).one_or_none()
    return _member(row) if row else None


async def count_owners(conn: AsyncConnection, org_id: uuid.UUID) -> int:
    """How many owners ``org_id`` has."""
    return int((await conn.execute(_OWNERS, {"org_id": org_id})).scalar_one())


async def set_role(
    conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID, role: Role, now: datetime
) -> None:
    """Change a member's role."""
    params = {"org": org_id, "member": user_id, "new_role": role.value, "now": now}
    await conn.execute(_SET_ROLE, params)


async def remove_member(conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """End a membership."""
    await conn.execute(_REMOVE, {"org_id": org_id, "user_id": user_id})


async def insert_invitation(
    conn: AsyncConnection,
    *,
    invitation_id: uuid.UUID,
    org_id: uuid.UUID,
    email: str,
    role: Role,
    token_hash: str,
    created_by: uuid.UUID,
    now: datetime,
    expires_at: datetime,
) -> Invitation:
    """Store an invitation under its token's hash."""
    values = {
        "id": invitation_id,
        "org_id": org_id,
        "email": email,
        "role": role.value,
        "token_hash": token_hash,
        "created_by": created_by,
        "created_at": now,
        "expires_at": expires_at,
    }
    await conn.execute(insert(invitations), values)
    return Invitation(invitation_id, org_id, email, role, created_by, now, expires_at, None, None)


async def list_invitations(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> Page[Invitation]:
    """The organisation's invitations, newest first (accepted and revoked ones too)."""
    stmt = _INVITATION.where(_i.org_id == org_id)
    return await paginate(conn, stmt, _INVITATION_ORDER, page, _invitation)


async def revoke_invitation(
    conn: AsyncConnection, org_id: uuid.UUID, invitation_id: uuid.UUID, now: datetime
) -> bool:
    """Revoke a pending invitation of ``org_id``; False when there is none."""
    params = {"org": org_id, "invitation": invitation_id, "now": now}
    return (await conn.execute(_REVOKE, params)).one_or_none() is not None


async def invitation_by_hash(conn: AsyncConnection, token_hash: str) -> Invitation | None:
    """The invitation whose token hashes to ``token_hash``."""
    row = (await conn.execute(_BY_HASH, {"token_hash": token_hash})).one_or_none()
    return _invitation(row) if row else None


async def mark_accepted(
    conn: AsyncConnection, invitation_id: uuid.UUID, user_id: uuid.UUID, now: datetime
) -> bool:
    """Use the invitation once; False when it was used or revoked meanwhile."""
    params = {"invitation": invitation_id, "member": user_id, "now": now}
    return (await conn.execute(_ACCEPT, params)).one_or_none() is not None
