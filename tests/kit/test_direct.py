"""Routes served off FastAPI's per-request dependency solving (visiona/kit/direct.py):
the same answers as FastAPI's handler, the same OpenAPI document."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel

from tests.support.settings import make_settings
from visiona.app import create_app
from visiona.auth.endpoints import router as auth_router
from visiona.devices.endpoints import router as devices_router
from visiona.kit.direct import SolvedRoute, solved_get
from visiona.kit.http import install_edge, install_error_handlers
from visiona.kit.metrics import Metrics
from visiona.ops.endpoints import router as ops_router

SNAPSHOT = Path(__file__).parent / "snapshots" / "hot_routes_openapi.json"
HOT = ("/api/v1/auth/me", "/api/v1/devices", "/api/v1/devices/{device_id}", "/healthz")


def _hot_routes() -> list[APIRoute]:
    """The hot reads as their feature routers declare them (the app includes them)."""
    found = [
        route
        for router, path in (
            (auth_router, "/auth/me"),
            (devices_router, "/devices"),
            (devices_router, "/devices/{device_id}"),
            (ops_router, "/healthz"),
        )
        for route in router.routes
        if isinstance(route, APIRoute) and route.path == path and route.methods == {"GET"}
    ]
    assert len(found) == len(HOT)
    return found


def test_hot_routes_are_planned_and_documented_as_before() -> None:
    """The OpenAPI operations of the hot reads are those of the same routes declared with
    ``@router.get`` (the committed snapshot, taken before they were planned)."""
    app = create_app(make_settings(database_url="sqlite+aiosqlite:///:memory:"))
    for route in _hot_routes():
        assert isinstance(route, SolvedRoute), route.path
        assert route.planned, f"{route.path} fell back to FastAPI's dependency solving"
    doc = app.openapi()
    now = {path: {"get": doc["paths"][path]["get"]} for path in HOT}
    assert now == json.loads(SNAPSHOT.read_text()), (
        "the OpenAPI of a hot route changed: if on purpose, regenerate "
        f"{SNAPSHOT.name} from app.openapi()"
    )


# -- the same endpoint served both ways -------------------------------------------


class Item(BaseModel):
    """What the test endpoint answers."""

    id: uuid.UUID
    limit: int
    tag: str | None
    trace: str | None
    opened: bool


_EVENTS: list[str] = []


async def held(request: Request) -> AsyncIterator[str]:
    """A generator dependency (as the unit of work): closed before the response is sent."""
    _EVENTS.append(f"open {request.method}")
    try:
        yield "held"
    finally:
        _EVENTS.append("close")


async def caller(request: Request) -> str:
    """A plain dependency of the request (as the session check)."""
    if request.headers.get("authorization") != "Bearer ok":
        from visiona.kit.errors import UnauthorizedError  # noqa: PLC0415 - local to the test

        raise UnauthorizedError()
    return "me"


async def limit_param(limit: Annotated[int, Query(ge=1, le=10)] = 5) -> int:
    """A dependency with a query parameter of its own (as the page parameters)."""
    return limit


async def endpoint(  # noqa: PLR0917 - one parameter of every supported kind
    item_id: uuid.UUID,
    who: Annotated[str, Depends(caller)],
    opened: Annotated[str, Depends(held, scope="function")],
    limit: Annotated[int, Depends(limit_param)],
    tag: Annotated[str | None, Query(max_length=3)] = None,
    x_trace: Annotated[str | None, Header()] = None,
) -> Item:
    """Echo what was solved."""
    assert who == "me"
    return Item(id=item_id, limit=limit, tag=tag, trace=x_trace, opened=opened == "held")


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_edge(
        app, metrics=Metrics(), max_body_bytes=1024, body_read_timeout=5, unlimited=lambda _: False
    )
    plain, solved = APIRouter(), APIRouter()
    plain.get("/plain/{item_id}", response_model=Item)(endpoint)
    solved_get(solved, "/solved/{item_id}", response_model=Item)(endpoint)
    route = solved.routes[0]
    assert isinstance(route, SolvedRoute)
    assert route.planned  # a header, a query, a path, a generator and nested dependencies
    app.include_router(plain)
    app.include_router(solved)
    return app


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"{uuid.UUID(int=1)}?tag=ab&limit=3", {"X-Trace": "t-1"}),
        (f"{uuid.UUID(int=1)}", {}),
        ("not-a-uuid?tag=abcd&limit=0", {}),  # three 422 errors, in FastAPI's order
        (f"{uuid.UUID(int=1)}?limit=x", {}),
    ],
)
async def test_a_solved_route_answers_as_fastapi_does(path: str, headers: dict[str, str]) -> None:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        for auth in ({"Authorization": "Bearer ok"}, {}):
            _EVENTS.clear()
            plain = await http.get(f"/plain/{path}", headers={**headers, **auth})
            plain_events = list(_EVENTS)
            _EVENTS.clear()
            solved = await http.get(f"/solved/{path}", headers={**headers, **auth})
            assert (solved.status_code, solved.json()) == (plain.status_code, plain.json())
            assert solved.headers["content-type"] == plain.headers["content-type"]
            assert plain_events == _EVENTS


def test_a_route_with_a_body_is_left_to_fastapi() -> None:
    router = APIRouter()

    async def create(body: Item) -> Item:
        return body

    router.add_api_route("/x", create, methods=["POST"], route_class_override=SolvedRoute)
    route = router.routes[0]
    assert isinstance(route, SolvedRoute)
    assert not route.planned


async def test_dependency_overrides_are_honoured_by_fastapis_handler() -> None:
    app = _app()

    async def anyone() -> str:
        return "me"

    app.dependency_overrides[caller] = anyone
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get(f"/solved/{uuid.UUID(int=2)}")
    assert response.status_code == 200, response.text
