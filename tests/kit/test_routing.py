"""Included routers a path cannot reach are not tried (visiona/kit/routing.py), with the
same answers as FastAPI's own routing."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from tests.support.settings import make_settings
from visiona.app import create_app
from visiona.kit.routing import skip_unreachable


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
