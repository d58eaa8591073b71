"""JSON parsed by hand (not by FastAPI's body path) with a nesting bound.

Python's parser recurses once per nesting level and raises ``RecursionError`` past
the interpreter's limit (a 500 if uncaught). :func:`loads_bounded` measures the
depth first, in one linear pass over the text that skips strings, and refuses
deeper documents with :class:`JsonTooDeepError` (a ``ValueError``).
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32


class JsonTooDeepError(ValueError):
    """The document nests arrays/objects deeper than allowed."""


def nesting_depth(text: str) -> int:
    """The deepest array/object nesting of ``text`` (strings skipped; no validation)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads_bounded(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)``, refusing documents nested deeper than ``max_depth``."""
    if nesting_depth(text) > max_depth:
        raise JsonTooDeepError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(text)
