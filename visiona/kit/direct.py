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
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response

DirectHandler = Callable[[Request], Awaitable[Response]]
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
