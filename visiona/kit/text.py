"""Strings the database can store: the one pydantic type of every stored string field.

PostgreSQL refuses a NUL character (U+0000) in ``text`` and cannot encode an unpaired
UTF-16 surrogate (U+D800 to U+DFFF) as UTF-8; SQLite would store either. Every request
field that is stored or used in a query is a :data:`StoredStr`, so such input is a 422
naming the field, on both databases alike, before any SQL runs.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_storable(value: str) -> str:
    """Return ``value`` if both databases can store it; raise ``ValueError`` otherwise."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (U+0000) characters")
    if _SURROGATE.search(value):
        raise ValueError("must not contain unpaired surrogates (U+D800 to U+DFFF)")
    return value


#: Add to an ``Annotated[str, StringConstraints(...), STORABLE]`` (after the constraints,
#: which a nested ``Annotated`` would drop).
STORABLE = AfterValidator(check_storable)
StoredStr = Annotated[str, STORABLE]
