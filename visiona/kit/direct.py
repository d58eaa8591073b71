"""Routes whose handler takes the request alone: FastAPI documents them, Starlette runs them.

FastAPI builds every route's handler from its endpoint's signature: for each request it
solves the dependency graph, validates the parameters into a dict and calls the
endpoint with them. On the proxy route, which does no more than check a session and
relay bytes, that machinery cost more than the check (py-spy, tiny proxied requests:
9 % of the server's samples in ``solve_dependencies`` against 3.7 % in the session
check itself).

:func:`direct_route` returns an :class:`~fastapi.routing.APIRoute` class whose
handler is a plain ``async def handler(request) -> Response``. The endpoint given to
``add_api_route`` is still read for the OpenAPI entry (parameters, responses,
operation id), the route still matches, sets ``scope["route"]`` (the metrics label is
its template) and runs inside the exception handlers; only the per-request dependency
solving is gone. The handler does its own parameter parsing: :func:`path_uuid` gives
the same 422 as FastAPI's validation would.

:class:`SolvedRoute` (declared with :func:`solved_get`) does the same for ordinary
endpoints without a hand-written handler: the endpoint's dependencies are turned into
a plan once, when the route is built, and each request runs the plan (FastAPI's order,
cache, exit stacks and parameter validation) instead of ``solve_dependencies``; the
hot reads (``/auth/me``, ``GET /devices/{id}``, the device list, ``/healthz``) use it.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import fastapi.routing
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter, serialize_response
from fastapi.utils import is_body_allowed_for_status_code
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

DirectHandler = Callable[[Request], Awaitable[Response]]
_E = TypeVar("_E", bound=Callable[..., Any])
_UUID = TypeAdapter(uuid.UUID)


def direct_route(handler: DirectHandler) -> type[APIRoute]:
    """An ``APIRoute`` class (for ``route_class_override``) that runs ``handler``."""

    class DirectRoute(APIRoute):
        """Documented from its endpoint; served by ``handler`` (see the module doc)."""

        def get_route_handler(self) -> Callable[[Request], Any]:
            """The request handler: ``handler`` itself, no dependency solving."""
            return handler

    DirectRoute.__name__ = DirectRoute.__qualname__ = f"DirectRoute[{handler.__name__}]"
    return DirectRoute


def path_uuid(request: Request, name: str) -> uuid.UUID:
    """Path parameter ``name`` as a UUID, or the 422 FastAPI's validation gives."""
    raw = request.path_params[name]
    try:
        return _UUID.validate_python(raw)
    except ValidationError as err:
        errors = [{**error, "loc": ("path", name)} for error in err.errors()]
        raise RequestValidationError(errors) from err


class _Plan:
    """One dependant's dependencies, solved in FastAPI's order without its machinery.

    What FastAPI does per request, kept: the sub-dependencies in declaration order, each
    solved once per request (``use_cache``), generator dependencies entered on the
    request's function or request exit stack (their ``scope``), then the path and query
    parameters validated by FastAPI's own :func:`request_params_to_args` (same values,
    same 422 errors), the ``Request`` given where asked for. What is gone: the checks
    and allocations for what these routes do not use (bodies, background tasks,
    response parameters, security scopes, overrides): a dependant using one is not
    planned (FastAPI serves the route).
    """

    __slots__ = (
        "_function_scope",
        "_generator",
        "cache",
        "call",
        "connection_name",
        "cookie_params",
        "header_params",
        "path_params",
        "query_params",
        "subs",
    )

    def __init__(self, dependant: Dependant, subs: list[tuple[str | None, _Plan]]) -> None:
        self.call = dependant.call
        self.cache = dependant.use_cache
        self.subs = subs
        self.path_params = dependant.path_params
        self.query_params = dependant.query_params
        self.header_params = dependant.header_params
        self.cookie_params = dependant.cookie_params
        self.connection_name = dependant.request_param_name or dependant.http_connection_param_name
        self._generator = inspect.isasyncgenfunction(dependant.call)
        self._function_scope = dependant.scope == "function"

    @classmethod
    def of(cls, dependant: Dependant, *, root: bool = False) -> _Plan | None:
        """The plan of ``dependant``, or None when it uses what plans do not do."""
        call = dependant.call
        unsupported = (
            dependant.body_params
            or dependant.websocket_param_name
            or dependant.response_param_name
            or dependant.background_tasks_param_name
            or dependant.security_scopes_param_name
            or dependant.own_oauth_scopes
            or dependant.concurrency is not None
            or (
                dependant.request_param_name is not None
                and dependant.http_connection_param_name is not None
            )
        )
        if unsupported or call is None:
            return None
        if not (
            inspect.iscoroutinefunction(call) or (inspect.isasyncgenfunction(call) and not root)
        ):
            return None  # sync callables run in a thread under FastAPI: keep its way
        subs: list[tuple[str | None, _Plan]] = []
        for sub in dependant.dependencies:
            plan = cls.of(sub)
            if plan is None:
                return None
            subs.append((sub.name, plan))
        return cls(dependant, subs)

    async def solve(
        self, request: Request, cache: dict[Any, Any], errors: list[Any]
    ) -> dict[str, Any] | None:
        """The keyword arguments of :attr:`call`; None (and ``errors`` grown) if invalid."""
        values: dict[str, Any] = {}
        valid = True
        for name, sub in self.subs:
            if sub.cache and sub.call in cache:
                solved = cache[sub.call]
            else:
                sub_values = await sub.solve(request, cache, errors)
                if sub_values is None:
                    valid = False
                    continue
                solved = await sub.run(request, sub_values)
                cache.setdefault(sub.call, solved)
            if name is not None:
                values[name] = solved
        if self.path_params:
            found, wrong = request_params_to_args(self.path_params, request.path_params)
            values.update(found)
            errors.extend(wrong)
            valid = valid and not wrong
        if self.query_params:
            found, wrong = request_params_to_args(self.query_params, request.query_params)
            values.update(found)
            errors.extend(wrong)
            valid = valid and not wrong
        if self.header_params:
            found, wrong = request_params_to_args(self.header_params, request.headers)
            values.update(found)
            errors.extend(wrong)
            valid = valid and not wrong
        if self.cookie_params:
            found, wrong = request_params_to_args(self.cookie_params, request.cookies)
            values.update(found)
            errors.extend(wrong)
            valid = valid and not wrong
        if self.connection_name is not None:
            values[self.connection_name] = request
        return values if valid else None

    async def run(self, request: Request, values: dict[str, Any]) -> Any:
        """Call the dependency (a generator is entered on the request's exit stack)."""
        assert self.call is not None  # noqa: S101 - plans are only built with a call
        if self._generator:
            key = _FUNCTION_STACK if self._function_scope else _REQUEST_STACK
            stack: AsyncExitStack = request.scope[key]
            return await stack.enter_async_context(asynccontextmanager(self.call)(**values))
        return await self.call(**values)


_FUNCTION_STACK = "fastapi_function_astack"
_REQUEST_STACK = "fastapi_inner_astack"


class SolvedRoute(APIRoute):
    """An ``APIRoute`` whose dependencies are solved by a plan built once (:class:`_Plan`).

    For the hot reads (``/auth/me``, ``GET /devices/{id}``, the device list,
    ``/healthz``): the endpoint is declared as usual, so the OpenAPI document is
    FastAPI's; each request runs the plan, the endpoint, and FastAPI's own response
    serialization (the response model's validation and ``dump_json``). An endpoint
    whose dependencies a plan cannot do (bodies, sync callables, overrides, ...) is
    served by FastAPI's handler unchanged.
    """

    #: Whether requests are served by a plan (False: FastAPI's handler).
    planned = False

    def get_route_handler(self) -> Callable[[Request], Any]:
        """The planned handler, or FastAPI's when the dependant needs its machinery."""
        route: Any = self
        effective = getattr(fastapi.routing, "_effective_route_context_var", None)
        context = effective.get() if effective is not None else None
        if context is not None and getattr(context, "original_route", None) is self:
            route = context  # included: the prefixed path and the routers' dependencies
        plan = _Plan.of(route.dependant, root=True)
        fastapis = super().get_route_handler()
        if (
            plan is None
            or not isinstance(route.response_class, DefaultPlaceholder)
            or route.stream_item_field is not None
            or route.is_json_stream
        ):
            self.planned = False
            return fastapis
        self.planned = True
        return _planned_handler(route, plan, fastapis)


def _planned_handler(route: Any, plan: _Plan, fastapis: DirectHandler) -> DirectHandler:
    """The handler running ``plan``; FastAPI's (``fastapis``) while the app (the
    ``dependency_overrides_provider``) overrides dependencies, as tests may."""
    overrides: dict[Any, Any] = getattr(
        route.dependency_overrides_provider, "dependency_overrides", {}
    )
    field = route.response_field
    status_code = route.status_code
    options = {
        "include": route.response_model_include,
        "exclude": route.response_model_exclude,
        "by_alias": route.response_model_by_alias,
        "exclude_unset": route.response_model_exclude_unset,
        "exclude_defaults": route.response_model_exclude_defaults,
        "exclude_none": route.response_model_exclude_none,
    }
    endpoint = plan.call
    assert endpoint is not None  # noqa: S101 - plans are only built with a call

    async def handler(request: Request) -> Response:
        if overrides:
            return await fastapis(request)
        errors: list[Any] = []
        values = await plan.solve(request, {}, errors)
        if values is None:
            raise RequestValidationError(errors)
        raw = await endpoint(**values)
        if isinstance(raw, Response):
            return raw
        content = await serialize_response(
            field=field, response_content=raw, dump_json=field is not None, **options
        )
        code = status_code or 200
        if field is not None:
            response = Response(content=content, status_code=code, media_type="application/json")
        else:
            response = JSONResponse(content, status_code=code)
        if not is_body_allowed_for_status_code(response.status_code):
            response.body = b""
        return response

    handler.__name__ = handler.__qualname__ = f"planned_{getattr(endpoint, '__name__', 'route')}"
    return handler


def solved_get(router: APIRouter, path: str, **options: Any) -> Callable[[_E], _E]:
    """``@router.get(path, **options)`` served as a :class:`SolvedRoute`.

    (FastAPI's ``get`` decorator takes no route class; ``add_api_route`` does.)
    """

    def decorate(endpoint: _E) -> _E:
        router.add_api_route(
            path, endpoint, methods=["GET"], route_class_override=SolvedRoute, **options
        )
        return endpoint

    return decorate
