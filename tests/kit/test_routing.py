"""Included routers a path cannot reach are not tried, and hot GETs skip FastAPI's routing
(visiona/kit/routing.py), with the same answers as FastAPI's own routing."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support.settings import make_settings
from visiona.app import create_app
from visiona.kit.direct import solved_get
from visiona.kit.routing import HotRoutes, skip_unreachable


def _app(*, guarded: bool) -> tuple[FastAPI, APIRouter, list[str]]:
    tried: list[str] = []
    first = APIRouter()
    second = APIRouter()

    @first.get("/orgs/{org_id}")
    async def org(org_id: str) -> dict[str, str]:
        return {"org": org_id}

    @second.get("/devices/{device_id}")
    async def device(device_id: str) -> dict[str, str]:
        return {"device": device_id}

    @second.get("/items")
    async def items() -> list[int]:
        return [1]

    app = FastAPI()
    app.include_router(first, prefix="/api")
    app.include_router(second, prefix="/api")
    for route in first.routes:
        assert isinstance(route, APIRoute)
        spied = route.matches

        def spy(scope: object, spied: object = spied, path: str = route.path) -> object:
            tried.append(path)
            return spied(scope)  # type: ignore[operator]

        route.matches = spy  # type: ignore[method-assign,assignment]
    if guarded:
        assert skip_unreachable(app) == 2
    return app, first, tried


async def _answers(app: FastAPI) -> list[tuple[int, str, str | None]]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        found = []
        for method, path in (
            ("GET", "/api/devices/d1"),
            ("GET", "/api/orgs/o1"),
            ("POST", "/api/devices/d1"),  # 405: the path is known for GET
            ("GET", "/api/items/"),  # redirected to /api/items
            ("GET", "/api/nowhere"),  # 404
        ):
            response = await client.request(method, path)
            found.append((response.status_code, response.text, response.headers.get("location")))
        return found


async def test_same_answers_and_unreachable_routers_not_tried() -> None:
    plain, _, _ = _app(guarded=False)
    app, _, tried = _app(guarded=True)
    assert await _answers(app) == await _answers(plain)
    tried.clear()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get("/api/devices/d1")).json() == {"device": "d1"}
    assert tried == []  # the first router's route was never asked


async def test_a_route_added_after_the_guard_is_reached() -> None:
    app, first, _ = _app(guarded=True)

    @first.get("/late")
    async def late() -> str:
        return "late"

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.get("/api/late")
    assert response.status_code == 200
    assert response.json() == "late"


def test_every_router_of_the_app_is_guarded() -> None:
    app = create_app(make_settings(database_url="sqlite+aiosqlite:///:memory:"))
    included = [route for route in app.router.routes if hasattr(route, "original_router")]
    guarded = [route for route in included if "matches" in vars(route)]
    assert included
    assert guarded == included


def _front(inner: ASGIApp) -> ASGIApp:
    """What FastAPI's stack gives the router, in brief: its errors' answers and the
    exit stack its handlers expect."""
    handled = ExceptionMiddleware(inner)

    async def front(scope: Scope, receive: Receive, send: Send) -> None:
        async with AsyncExitStack() as stack:
            scope["fastapi_middleware_astack"] = stack
            await handled(scope, receive, send)

    return front


def _hot_app() -> tuple[FastAPI, APIRouter, HotRoutes]:
    """An app whose solved GET routes sit behind earlier routes that take some of their
    paths (a static one, a ``path`` parameter), served through :class:`HotRoutes`."""
    first = APIRouter()
    second = APIRouter()

    @first.get("/devices/special")
    async def special() -> dict[str, str]:
        return {"route": "special"}

    @first.get("/devices/{device_id}/files/{rest:path}")
    async def files(device_id: str, rest: str) -> dict[str, str]:
        return {"route": "files", "rest": rest}

    async def device(device_id: str, request: Request) -> dict[str, object]:
        fastapi_scope = request.scope["fastapi"]
        context = fastapi_scope["effective_route_context"]
        return {
            "route": "device",
            "device_id": device_id,
            "path_params": request.path_params,
            "template": context.path_format,
            "endpoint": request.scope["endpoint"].__name__,
            "is_route": request.scope["route"] is context.original_route,
            "included": fastapi_scope["included_router"].original_router is second,
        }

    async def listing(request: Request) -> dict[str, object]:
        return {"route": "list", "template": request.scope["route"].path}

    solved_get(second, "/devices/{device_id}")(device)
    solved_get(second, "/devices")(listing)
    app = FastAPI()
    app.include_router(first, prefix="/api")
    app.include_router(second, prefix="/api")
    hot = HotRoutes(app.router)
    app.build_middleware_stack = lambda: _front(hot)  # type: ignore[method-assign]
    return app, second, hot


async def test_hot_routes_answer_as_fastapis_routing_and_earlier_routes_win() -> None:
    app, _second, hot = _hot_app()
    plain, _, _ = _hot_app()
    plain.build_middleware_stack = lambda: _front(plain.router)  # type: ignore[method-assign]
    paths = [
        ("GET", "/api/devices/d1"),
        ("GET", "/api/devices"),
        ("GET", "/api/devices/special"),  # an earlier static route takes it
        ("GET", "/api/devices/d1/files/a/b"),  # an earlier path route takes it
        ("GET", "/api/devices/"),  # FastAPI's redirect
        ("POST", "/api/devices/d1"),  # 405
        ("GET", "/api/nowhere"),  # 404
    ]
    answers = []
    for each in (app, plain):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=each), base_url="http://t"
        ) as client:
            found = []
            for method, path in paths:
                response = await client.request(method, path)
                found.append((response.status_code, response.text))
            answers.append(found)
    assert answers[0] == answers[1]
    assert answers[0][0][0] == 200
    body = httpx.Response(200, text=answers[0][0][1]).json()
    assert body == {
        "route": "device",
        "device_id": "d1",
        "path_params": {"device_id": "d1"},
        "template": "/api/devices/{device_id}",
        "endpoint": "device",
        "is_route": True,
        "included": True,
    }
    assert httpx.Response(200, text=answers[0][2][1]).json() == {"route": "special"}
    assert set(hot._static) == {"/api/devices"}
    assert [h.context.path_format for h in hot._dynamic] == ["/api/devices/{device_id}"]


async def test_a_route_added_later_in_front_of_a_hot_one_is_seen() -> None:
    app, _second, _hot = _hot_app()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get("/api/devices/late")).json()["route"] == "device"
        early = APIRouter()

        @early.get("/devices/late")
        async def late() -> dict[str, str]:
            return {"route": "late"}

        app.include_router(early, prefix="/api")
        app.router.routes.insert(0, app.router.routes.pop())  # ahead of the others
        assert (await client.get("/api/devices/late")).json() == {"route": "late"}
        assert (await client.get("/api/devices/d2")).json()["route"] == "device"


def test_the_apps_hot_reads_are_dispatched_hot() -> None:
    app = create_app(make_settings(database_url="sqlite+aiosqlite:///:memory:"))
    hot = HotRoutes(app.router)
    hot._build()
    assert set(hot._static) == {"/api/v1/auth/me", "/api/v1/devices", "/healthz"}
    assert [h.context.path_format for h in hot._dynamic] == ["/api/v1/devices/{device_id}"]
