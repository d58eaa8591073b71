"""CPU per request of the hot reads, in process: what a route costs, whatever the load.

The app runs in this process on a migrated SQLite file (the embedded default) and is
called through httpx's ASGI transport; each route is called ``REQUESTS`` times after a
warm-up and the process's CPU time (``time.process_time``, so other work on a shared
machine changes it little) is divided by the count. The client's own CPU is included, the
same for every route and revision: the figures compare routes and revisions, they are not
a server's throughput (``bench api`` measures that, against a floor).

Reference in the same run: a bare Starlette route answering a constant JSON body through
the same transport and client (the client's and the ASGI plumbing's share of each figure).
Rounds are interleaved (reference, routes, reference, ...), median and range printed.

To compare revisions, run it from a worktree of each, interleaved:
``git worktree add /tmp/old REV && (cd /tmp/old && .venv/bin/python -m bench reqcpu)``
— the module imports ``visiona`` from the working directory.
Reproduce: ``.venv/bin/python -m bench reqcpu``.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from visiona.app import create_app
from visiona.kit import migrate
from visiona.kit.settings import Settings

REQUESTS = 2000
WARM_UP = 200
ROUNDS = 3
PASSWORD = "benchmark password"


async def _cpu_per_call(call: Callable[[], Awaitable[httpx.Response]]) -> float:
    """Microseconds of this process's CPU per call (after a warm-up)."""
    for _ in range(WARM_UP):
        response = await call()
        response.raise_for_status()
    started = time.process_time()
    for _ in range(REQUESTS):
        await call()
    return (time.process_time() - started) / REQUESTS * 1e6


def _reference_app() -> Starlette:
    async def constant(_request: object) -> JSONResponse:
        return JSONResponse({"id": "00000000-0000-0000-0000-000000000000", "name": "device"})

    return Starlette(routes=[Route("/ref", constant)])


async def _measure(url: str, storage: str) -> dict[str, list[float]]:
    app = create_app(Settings(database_url=url, storage_url=storage))
    ref = _reference_app()
    figures: dict[str, list[float]] = {}
    async with (
        LifespanManager(app, startup_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as http,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=ref), base_url="http://b") as bare,
    ):
        user = {"email": "cpu@example.com", "password": PASSWORD, "name": "cpu"}
        (await http.post("/api/v1/auth/register", json=user)).raise_for_status()
        login = await http.post(
            "/api/v1/auth/login", json={k: user[k] for k in ("email", "password")}
        )
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        device = await http.post(
            "/api/v1/devices",
            json={"name": "d", "device_type": "kl520", "serial_number": "CPU-1"},
            headers=headers,
        )
        device_id = device.json()["id"]
        routes: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
            "reference: bare Starlette JSON": lambda: bare.get("/ref"),
            "GET /devices/{id}": lambda: http.get(f"/api/v1/devices/{device_id}", headers=headers),
            "GET /auth/me": lambda: http.get("/api/v1/auth/me", headers=headers),
            "GET /devices": lambda: http.get("/api/v1/devices", headers=headers),
            "GET /healthz": lambda: http.get("/healthz"),
        }
        for _ in range(ROUNDS):
            for name, call in routes.items():
                figures.setdefault(name, []).append(await _cpu_per_call(call))
    return figures


def main() -> None:
    """Print the CPU per request of each hot read and of the reference."""
    with tempfile.TemporaryDirectory(prefix="bench-reqcpu-") as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/visiona.sqlite"
        migrate.upgrade(url)
        figures = asyncio.run(_measure(url, Path(tmp).as_uri()))
    print(f"CPU per request (client + server, in process, SQLite), {ROUNDS} interleaved rounds")
    reference = statistics.median(figures["reference: bare Starlette JSON"])
    for name, values in figures.items():
        median = statistics.median(values)
        print(
            f"  {name:32s} {median:7.0f} µs  [{min(values):.0f}-{max(values):.0f}]"
            f"  x{median / reference:.2f} of the reference"
        )
