"""What the organisations feature hands out: the cached membership lookup.

Built by the composition root (:mod:`visiona.app`) in the lifespan; the principal of
every request (:mod:`visiona.auth.dependencies`) resolves its organisation through it,
and the routes that change a membership tell it (after their commit).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from visiona.kit.runtime import Provided
from visiona.orgs.access import Memberships

#: The cached membership lookup of this node.
MEMBERSHIPS = Provided[Memberships]("memberships")
MembershipsDep = Annotated[Memberships, Depends(MEMBERSHIPS.dependency)]

__all__ = ["MEMBERSHIPS", "MembershipsDep"]
