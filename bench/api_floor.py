"""The API floor: the least a Python server on this stack does for `GET /devices/{id}`.

A raw Starlette app on the same uvicorn (httptools, uvloop) doing what the real route
does: sha256 of the bearer token, the same Lua session check by one EVALSHA (redis-py
with hiredis), one asyncpg ``fetchrow`` with the stale-status CASE, JSON out. No
framework beyond routing, no ORM, no middleware. `bench_api` measures it in the same
run as the real server and prints the real figures as a ratio to it.

Run: ``python -m bench.api_floor PORT DSN REDIS_URL`` (the DSN in asyncpg form).
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from visiona.auth.sessions import _TOUCH_SCRIPT

_SESSION_PREFIX = "visiona:sess:"
_IDLE_TTL = 12 * 3600  # the default VISIONA_SESSION_IDLE_TTL
_STALE = timedelta(seconds=90)
_QUERY = """
SELECT id, owner_user_id, name, device_type, serial_number,
       CASE WHEN remote_status <> 'offline' AND last_seen_at < $3 THEN 'offline'
            ELSE remote_status END AS remote_status,
       last_seen_at, last_connected_at, status, created_at, updated_at, paired_at
FROM devices WHERE id = $1 AND owner_user_id = $2 AND deleted_at IS NULL
"""


def _error(status: int, code: str) -> Response:
    body = json.dumps({"error": {"code": code, "message": code}})
    return Response(body, status_code=status, media_type="application/json")


def build(dsn: str, redis_url: str) -> Starlette:
    """The floor application for PostgreSQL ``dsn`` and Redis ``redis_url``."""
    state: dict[str, Any] = {}
    sha = hashlib.sha1(_TOUCH_SCRIPT.encode(), usedforsecurity=False).hexdigest()

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # the same size as the server's default pool (VISIONA_DB_POOL_SIZE)
        state["pool"] = await asyncpg.create_pool(dsn, min_size=1, max_size=20)
        state["redis"] = Redis.from_url(redis_url)
        await state["redis"].script_load(_TOUCH_SCRIPT)
        try:
            yield
        finally:
            await state["redis"].aclose()
            await state["pool"].close()

    async def device(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ")
        key = _SESSION_PREFIX + hashlib.sha256(token.encode()).hexdigest()
        raw = await state["redis"].execute_command("EVALSHA", sha, 1, key, _IDLE_TTL)
        if not raw:
            return _error(401, "unauthorized")
        user_id = uuid.UUID(raw.decode().split("|", 2)[1])
        device_id = uuid.UUID(request.path_params["device_id"])
        stale_before = datetime.now(UTC) - _STALE
        row = await state["pool"].fetchrow(_QUERY, device_id, user_id, stale_before)
        if row is None:
            return _error(404, "not_found")
        body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
        return Response(json.dumps(body, default=str), media_type="application/json")

    return Starlette(
        routes=[Route("/api/v1/devices/{device_id}", device)],
        lifespan=lifespan,
    )


def main(argv: list[str]) -> None:
    """Serve the floor on 127.0.0.1:PORT."""
    port, dsn, redis_url = int(argv[0]), argv[1], argv[2]
    uvicorn.run(
        build(dsn, redis_url), host="127.0.0.1", port=port, log_config=None, access_log=False
    )


if __name__ == "__main__":
    main(sys.argv[1:])
