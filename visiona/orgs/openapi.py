"""The permission of each operation, in the OpenAPI document (``x-visiona-permission``).

A route acting in an organisation depends on ``visiona.auth.dependencies.requires``
(the permission is read from that dependency, so the document cannot drift from the
code); the routes under ``/orgs/{id}`` name theirs with ``openapi_extra``. Each such
operation also documents the ``X-Visiona-Org`` header and its 403 ``forbidden``,
404 ``not_found`` and 429 ``rate_limited`` (an API key over its rate). The matrix
test (tests/orgs/test_matrix.py) walks the document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from visiona.kit.errors import AppError, ForbiddenError, NotFoundError, RateLimitedError

_HEADER = {
    "name": "X-Visiona-Org",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "format": "uuid"},
    "description": "The organisation to act in (default: your personal one). One you "
    "are not a member of → 404.",
}


def _calls(dependant: Dependant) -> Iterator[object]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def api_routes(app: FastAPI) -> Iterator[Any]:
    """Every API route of ``app`` as included (full ``path_format``, its ``dependant``)."""
    for context in routing.iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def route_permission(route: Any, permission_of: Callable[[object], Any]) -> Any:
    """The permission ``route``'s dependencies check (None: none)."""
    for call in _calls(route.dependant):
        found = permission_of(call)
        if found is not None:
            return found
    return None


def install_permission_docs(app: FastAPI, permission_of: Callable[[object], Any]) -> None:
    """Wrap ``app.openapi`` to name each operation's permission and its org errors."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema and app.openapi_schema.get("x-visiona-permissions"):
            return app.openapi_schema
        schema = build()
        paths = schema.get("paths", {})
        for route in api_routes(app):
            if not route.include_in_schema:
                continue
            permission = route_permission(route, permission_of)
            if permission is None:
                continue
            for method in route.methods or ():
                operation = paths.get(route.path_format, {}).get(method.lower())
                if operation is None:
                    continue
                operation["x-visiona-permission"] = permission.value
                operation.setdefault("parameters", [])
                if not any(p.get("name") == _HEADER["name"] for p in operation["parameters"]):
                    operation["parameters"].append(dict(_HEADER))
                _add_error(operation, ForbiddenError)
                _add_error(operation, NotFoundError)
                _add_error(operation, RateLimitedError)  # an API key over its rate
        for operation in _operations(paths):
            if operation.get("x-visiona-org") == "path":
                _add_error(operation, ForbiddenError)
                _add_error(operation, NotFoundError)
        schema["x-visiona-permissions"] = True
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _operations(paths: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for operations in paths.values():
        for operation in operations.values():
            if isinstance(operation, dict):
                yield operation


def _add_error(operation: dict[str, Any], error: type[AppError]) -> None:
    responses = operation.setdefault("responses", {})
    key = str(error.status_code)
    found = responses.get(key)
    if found is None:
        responses[key] = {
            "description": f"Error codes: {error.code}",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
    elif error.code not in found.get("description", ""):
        found["description"] = f"{found.get('description', 'Error codes:')}, {error.code}"
