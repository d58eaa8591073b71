"""Routing that does not try the routers a request path cannot reach.

FastAPI (0.165) tries the app's routes in order, and an included router
(``app.include_router``) is one entry of them: asked whether it matches, it tries each
of its routes in turn, setting and restoring FastAPI's per-request routing context
around each (about 10,000 instructions per route, callgrind), and the router that
matched tries its routes once more to handle the request. So every request paid for
every route of every router included before its own: the organisations' and API keys'
13 routes, included ahead of the devices', made ``GET /devices/{id}`` about 20 % more
instructions in process (issue 22, item 6).

:func:`skip_unreachable` gives each included router of the app a guard: the path
patterns of its routes (the same compiled patterns its routes match with, duplicates
dropped). A request path that none of them matches cannot match any of its routes, so
the entry answers "no match" at once, without trying them; otherwise it runs as
before. The order of the routes, the OpenAPI document and every answer (404, the 405 of
a path matched for another method, the trailing-slash redirect) are unchanged. Routes
added to a router later are seen (the guard is rebuilt when FastAPI's version of the
router's routes changes); an entry whose routes it cannot read (a frontend group, a
host route, another FastAPI's internals) is left unguarded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette._utils import get_route_path
from starlette.routing import Match
from starlette.types import Scope

Matches = Callable[[Scope], tuple[Match, Scope]]


def _patterns(entry: Any) -> tuple[re.Pattern[str], ...] | None:
    """The distinct path patterns of ``entry``'s routes (None: some cannot be read)."""
    found: dict[str, re.Pattern[str]] = {}
    for context in entry.effective_route_contexts():
        route = context.starlette_route or context
        pattern = getattr(route, "path_regex", None)
        if not isinstance(pattern, re.Pattern):
            return None
        found.setdefault(pattern.pattern, pattern)
    return tuple(found.values())


class _Guard:
    """``entry.matches`` behind a test of the request path against its routes' patterns."""

    __slots__ = ("_entry", "_matches", "_patterns", "_version")

    def __init__(self, entry: Any, patterns: tuple[re.Pattern[str], ...]) -> None:
        self._entry = entry
        self._matches: Matches = entry.matches
        #: None: the routes cannot be read (then every request is FastAPI's to answer)
        self._patterns: tuple[re.Pattern[str], ...] | None = patterns
        self._version = entry.original_router._get_routes_version()

    def __call__(self, scope: Scope) -> tuple[Match, Scope]:
        patterns = self._patterns
        if patterns is not None:
            path = get_route_path(scope)
            for pattern in patterns:
                if pattern.match(path):
                    return self._matches(scope)
            version = self._entry.original_router._get_routes_version()
            if version == self._version:
                return Match.NONE, {}
            # routes added since the guard was made: read them again, let FastAPI answer
            self._patterns = _patterns(self._entry)
            self._version = version
        return self._matches(scope)


def skip_unreachable(app: FastAPI) -> int:
    """Guard each included router of ``app`` (see the module docstring); call once every
    router is included. Returns how many were guarded."""
    guarded = 0
    for entry in app.router.routes:
        if not (
            callable(getattr(entry, "effective_route_contexts", None))
            and callable(
                getattr(getattr(entry, "original_router", None), "_get_routes_version", None)
            )
            and "matches" not in vars(entry)
        ):
            continue
        patterns = _patterns(entry)
        if patterns is None:
            continue
        entry.matches = _Guard(entry, patterns)  # type: ignore[method-assign]  # the guard
        guarded += 1
    return guarded
