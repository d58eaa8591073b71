"""How the API meets its ecosystem: offline docs, security schemes, HEAD, CORS.

- :func:`create_fastapi` serves ``/docs`` (Swagger UI) and ``/redoc`` from assets in
  the ``fastapi-offline`` package (MIT; Swagger UI and ReDoc under their own
  licences inside it), so the pages work without a CDN.
- :func:`install_security_schemes` declares the bearer token and the session
  cookie in the OpenAPI document and on every operation that can answer 401.
- ``HEAD`` is answered wherever ``GET`` works by the one ASGI layer,
  :class:`visiona.kit.http.Edge`: the GET handler runs, its headers go out and its
  body is dropped (a streamed body stops at the first chunk).
- :func:`install_cors` allows the origins of ``VISIONA_CORS_ORIGINS`` only.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.cors import CORSMiddleware

BEARER = "bearerToken"
#: routes that answer 401 for a bad password or pairing token, not for missing auth
_PUBLIC = ("/auth/login", "/auth/register", "/agent/pair")
COOKIE = "sessionCookie"


def create_fastapi(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose ``/docs`` and ``/redoc`` use packaged assets (no CDN).

    FastAPI's native OpenTelemetry is off: the service's metrics are its own Prometheus
    ones (visiona/kit/metrics.py), and left on, every request asked the global tracer,
    meter and logger providers whether telemetry was configured.
    """
    from fastapi_offline import FastAPIOffline  # noqa: PLC0415 - only the server needs it

    kwargs.setdefault("telemetry", {"tracing": False, "metrics": False, "logs": False})
    app: FastAPI = FastAPIOffline(static_url="/docs-assets", **kwargs)
    return app


def install_security_schemes(app: FastAPI, cookie_name: str) -> None:
    """Declare bearer + cookie auth in OpenAPI; operations answering 401 require one."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {})
        components["securitySchemes"] = {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "A `vus_…` web session token from `POST /api/v1/auth/login`, "
                "or, on the agent's routes, its `vst_…` session token.",
            },
            COOKIE: {
                "type": "apiKey",
                "in": "cookie",
                "name": cookie_name,
                "description": "The web session cookie set by `POST /api/v1/auth/login`; "
                "writes also need the same-origin check (see api-spec.md).",
            },
        }
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if "401" not in operation.get("responses", {}) or path.endswith(_PUBLIC):
                    continue
                if "/agent/" in path:  # the agent's routes take its session token only
                    operation["security"] = [{BEARER: []}]
                else:
                    operation["security"] = [{BEARER: []}, {COOKIE: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def install_cors(app: FastAPI, origins: list[str]) -> None:
    """Answer CORS (preflight included) for ``origins`` only, with credentials; none: off."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials=True,
        allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Range", "If-Range", "X-Visiona-Org"],
        expose_headers=["Content-Length", "Content-Range", "ETag", "X-Request-Id"],
        max_age=600,
    )
