"""What the API keys feature hands out: the cached key lookup (:class:`ApiKeys`).

Built by the composition root (:mod:`visiona.app`) in the lifespan; the principal of a
request carrying a ``vak_…`` bearer resolves its key through it, and the revoke route
tells it (after the commit).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from visiona.apikeys.access import ApiKeys
from visiona.kit.runtime import Provided

#: The cached API key lookup of this node.
API_KEYS = Provided[ApiKeys]("api_keys")
ApiKeysDep = Annotated[ApiKeys, Depends(API_KEYS.dependency)]

__all__ = ["API_KEYS", "ApiKeysDep"]
