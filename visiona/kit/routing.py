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

:class:`HotRoutes` (in front of the router, inside the edge) goes further for the hot
reads (issue 26): a GET whose path one of the app's planned routes
(:class:`visiona.kit.direct.SolvedRoute`) matches is handed to that route with the scope
FastAPI's router would have given it, skipping the route tests of its own router (twice
over) — unless an earlier route whose pattern might take the same path matches it, in
which case FastAPI's router answers, as it would have anyway.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from starlette._utils import get_route_path
from starlette.convertors import PathConvertor
from starlette.routing import Match
from starlette.types import Scope

from visiona.kit.direct import SolvedRoute

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


# -- hot dispatch ---------------------------------------------------------------------

#: FastAPI's keys in ``scope["fastapi"]`` and its form-limit step, as its router sets them
#: when it selects a route (None: this FastAPI has other internals; no hot dispatch).
_CONTEXT_KEY: str = getattr(fastapi.routing, "_FASTAPI_EFFECTIVE_ROUTE_CONTEXT_KEY", "")
_INCLUDED_KEY: str = getattr(fastapi.routing, "_FASTAPI_INCLUDED_ROUTER_KEY", "")
_FASTAPI_KEY: str = getattr(fastapi.routing, "_FASTAPI_SCOPE_KEY", "")
_apply_router_form_limits: Any = getattr(fastapi.routing, "_apply_router_form_limits", None)
_VERSION = attrgetter("_routes_version")


class _Hot:
    """One planned GET route reachable without FastAPI's routing, and the earlier routes
    whose patterns might take one of its paths first (tried before it is chosen)."""

    __slots__ = ("app", "context", "convertors", "entry", "pattern", "shadows")

    def __init__(self, entry: Any, context: Any, shadows: tuple[re.Pattern[str], ...]) -> None:
        self.entry = entry
        self.context = context
        self.pattern: re.Pattern[str] = context.path_regex
        self.convertors = context.param_convertors
        self.shadows = shadows
        self.app = context.app


def _segments(route: Any) -> list[str | None] | None:
    """``route``'s path segments, None for one holding a parameter; None: it may match
    any number of segments (a ``path`` parameter, a mount) or its path is unknown."""
    path_format = getattr(route, "path_format", None)
    convertors = getattr(route, "param_convertors", None) or {}
    if not isinstance(path_format, str) or not path_format:
        return None
    if any(isinstance(c, PathConvertor) for c in convertors.values()):
        return None
    return [None if "{" in part else part for part in path_format.split("/")]


def _may_overlap(earlier: Any, hot: Any) -> bool:
    """Whether some path could match both ``earlier``'s pattern and ``hot``'s."""
    mine, theirs = _segments(hot), _segments(earlier)
    if mine is None or theirs is None:
        return True
    if len(mine) != len(theirs):
        return False
    return all(a is None or b is None or a == b for a, b in zip(mine, theirs, strict=True))


def _flattened(router: Any) -> list[tuple[Any, Any]]:
    """The app's routes in FastAPI's order as (included router, route context), the
    included router None for a route of the app itself and for the routes of a router
    that includes others (those are never dispatched hot)."""
    found: list[tuple[Any, Any]] = []
    for entry in router.routes:
        contexts = getattr(entry, "effective_route_contexts", None)
        if not callable(contexts):
            found.append((None, entry))
            continue
        inner = getattr(entry, "original_router", None)
        nested = any(
            getattr(r, "original_router", None) is not None for r in getattr(inner, "routes", ())
        )
        found.extend((None if nested else entry, context) for context in contexts())
    return found


def _routers(router: Any) -> list[Any]:
    """``router`` and every router included in it (their versions say when routes change)."""
    found = [router]
    for entry in router.routes:
        inner = getattr(entry, "original_router", None)
        if inner is not None:
            found.extend(_routers(inner))
    return found


class HotRoutes:
    """The app's router with a shortcut for the hot reads (issue 26).

    FastAPI finds a request's route by asking each route in order, and an included
    router asks its own routes twice (once to match, once to handle), setting and
    restoring its routing context around each: ``GET /devices/{id}`` paid for about 20
    route tests. A GET whose path matches a planned route
    (:class:`visiona.kit.direct.SolvedRoute`) is handed to that route here the way
    FastAPI's router hands it over (the same scope: router, included router, effective
    route context, form limits, path parameters, endpoint, route), unless an earlier route
    whose pattern might also take the path does (its pattern is tried first, and on a
    match FastAPI's router answers, as it would). Everything else — other methods and
    paths, the 404 and 405, redirects — goes to FastAPI's router. Routes added later are
    seen: the table is rebuilt when a router's routes change.
    """

    def __init__(self, router: Any) -> None:
        """Route through ``router`` (the FastAPI app's), with the hot shortcut."""
        self.router = router
        self._routers = _routers(router)
        self._version = -1
        self._static: dict[str, _Hot] = {}
        self._dynamic: tuple[_Hot, ...] = ()

    def _current(self) -> int:
        return sum(map(_VERSION, self._routers))

    def _build(self) -> None:
        self._routers = _routers(self.router)
        self._version = self._current()
        self._static, dynamic = {}, []
        plain = getattr(self.router.middleware_stack, "__func__", None) is type(self.router).app
        if (
            _apply_router_form_limits is None
            or not (_CONTEXT_KEY and _INCLUDED_KEY and _FASTAPI_KEY)
            or not plain
        ):
            self._dynamic = ()
            return  # router middleware or other FastAPI internals: FastAPI routes all
        flat = _flattened(self.router)
        for index, (entry, context) in enumerate(flat):
            original = getattr(context, "original_route", None)
            if (
                entry is None
                or not isinstance(original, SolvedRoute)
                or not original.planned
                or set(context.methods or ()) != {"GET"}
                or not callable(getattr(context, "app", None))
            ):
                continue
            shadows: list[re.Pattern[str]] = []
            for _entry, earlier in flat[:index]:
                route = getattr(earlier, "starlette_route", None) or earlier
                methods = getattr(route, "methods", None)
                if methods is not None and "GET" not in methods:
                    continue  # never FULL for a GET: FastAPI would not choose it
                pattern = getattr(route, "path_regex", None)
                if not isinstance(pattern, re.Pattern):
                    break  # an earlier route we cannot read: not hot
                if _may_overlap(route, context):
                    shadows.append(pattern)
            else:
                if context.param_convertors:
                    dynamic.append(_Hot(entry, context, tuple(shadows)))
                elif not any(shadow.match(context.path_format) for shadow in shadows):
                    # one path: whether an earlier route takes it is known now
                    self._static[context.path_format] = _Hot(entry, context, ())
        self._dynamic = tuple(dynamic)

    def _find(self, path: str) -> tuple[_Hot, re.Match[str] | None] | None:
        hot = self._static.get(path)
        found = None
        if hot is None:
            for candidate in self._dynamic:
                found = candidate.pattern.match(path)
                if found is not None:
                    hot = candidate
                    break
            else:
                return None
        for shadow in hot.shadows:
            if shadow.match(path):
                return None
        return hot, found

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Hand a hot GET to its route; anything else to FastAPI's router."""
        if scope["type"] != "http" or scope["method"] != "GET" or "fastapi.telemetry" in scope:
            await self.router(scope, receive, send)
            return
        if self._current() != self._version:
            self._build()
        found = self._find(get_route_path(scope))
        if found is None:
            await self.router(scope, receive, send)
            return
        hot, match = found
        context = hot.context
        router = self.router
        if "router" not in scope:
            scope["router"] = router
        _apply_router_form_limits(scope, router.form_limits)
        _apply_router_form_limits(scope, hot.entry.include_context.form_limits)
        fastapi_scope = scope.setdefault(_FASTAPI_KEY, {})
        fastapi_scope[_INCLUDED_KEY] = hot.entry
        params = dict(scope.get("path_params", {}))
        if match is not None:
            convertors = hot.convertors
            for key, value in match.groupdict().items():
                params[key] = convertors[key].convert(value)
        scope["endpoint"] = context.endpoint
        scope["path_params"] = params
        fastapi_scope[_CONTEXT_KEY] = context
        scope["route"] = context.original_route
        await hot.app(scope, receive, send)
