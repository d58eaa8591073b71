"""The organisation a console page acts in: the ``visiona_org`` cookie's, else personal.

The API's rule is unchanged (``X-Visiona-Org``, else the personal organisation); the
cookie is the console's only, set by its organisation switcher (``POST /org``). The
cookie's organisation passes the same cached membership check as the header's
(:meth:`visiona.orgs.access.Memberships.resolve`); a stale cookie (an organisation the
user left or was removed from, or a malformed value) falls back to the personal
organisation instead of a 404. The page's scripts send the organisation they act in as
``X-Visiona-Org`` on every API call (``data-org`` on the page's body).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from visiona.auth.dependencies import Caller, Principal, current_caller, principal_of
from visiona.kit.deps import get_database, open_connection
from visiona.kit.errors import NotFoundError
from visiona.kit.pagination import MAX_LIMIT, PageRequest
from visiona.orgs import service as orgs
from visiona.orgs.dependencies import MEMBERSHIPS
from visiona.orgs.permissions import Permission
from visiona.orgs.repository import MyOrg

_LOGGER = logging.getLogger(__name__)

#: The console's cookie naming the organisation its pages act in.
ORG_COOKIE = "visiona_org"


@dataclass(frozen=True, slots=True)
class Shell:
    """What every console page's frame shows: the organisation acted in and the others."""

    principal: Principal
    orgs: list[MyOrg]

    @property
    def can(self) -> frozenset[str]:
        """The permissions the page's role holds, by value (for the templates)."""
        return frozenset(p.value for p in self.principal.permissions)


def cookie_org(request: Request) -> uuid.UUID | None:
    """The organisation the cookie names (None: absent or malformed)."""
    raw = request.cookies.get(ORG_COOKIE)
    if not raw:
        return None
    try:
        return uuid.UUID(raw.strip())
    except ValueError:
        return None


async def principal_in_chosen_org(request: Request, caller: Caller) -> Principal:
    """``caller`` acting in the cookie's organisation when they are a member of it, else
    in their personal one (404 only for a user without any)."""
    memberships = MEMBERSHIPS.of(request.app)
    conn = open_connection(request)
    chosen = cookie_org(request)
    access = None
    if chosen is not None:
        access = await memberships.resolve(caller.user_id, chosen, conn)
    if access is None:
        access = await memberships.resolve(caller.user_id, None, conn)
    if access is None:
        raise NotFoundError("Organisation not found.")
    return principal_of(caller, access)


async def console_principal(request: Request) -> Principal:
    """The signed-in user (401: the sign-in page) acting in the chosen organisation; a
    page needs ``read``, which every role holds."""
    principal = await principal_in_chosen_org(request, await current_caller(request))
    principal.require(Permission.READ)
    return principal


async def my_orgs(request: Request, user_id: uuid.UUID) -> list[MyOrg]:
    """The organisations ``user_id`` belongs to (for the switcher), personal first."""
    page = PageRequest(limit=MAX_LIMIT)
    conn = open_connection(request)
    if conn is not None:
        return (await orgs.list_my_orgs(conn, user_id, page)).items
    async with (await get_database(request)).reading() as own:
        return (await orgs.list_my_orgs(own, user_id, page)).items


async def console_page(request: Request) -> Principal:
    """The page's principal; the frame's :class:`Shell` (with the switcher's
    organisations) is kept on ``request.state`` for :func:`shell_of`."""
    principal = await console_principal(request)
    request.state.console_shell = Shell(principal, await my_orgs(request, principal.user_id))
    return principal


def shell_of(request: Request) -> Shell | None:
    """The frame of a page that took :data:`ConsolePage` (None for the signed-out ones)."""
    shell = getattr(request.state, "console_shell", None)
    return shell if isinstance(shell, Shell) else None


#: The principal of a script's JSON poll (no switcher needed).
ConsolePrincipal = Annotated[Principal, Depends(console_principal)]
#: A page's principal (its frame, with the switcher, on ``request.state``).
ConsolePage = Annotated[Principal, Depends(console_page)]
