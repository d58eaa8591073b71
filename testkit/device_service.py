"""The device's local HTTP service for proxy tests (a small Starlette app under uvicorn)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern(size: int) -> bytes:
    """``size`` bytes of the download pattern."""
    reps, rest = divmod(size, len(BLOCK))
    return BLOCK * reps + BLOCK[:rest]


async def _echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.scope["raw_path"].decode("latin-1"),
            "query": request.url.query,
            "headers": [
                [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]
            ],
            "body": body.decode("latin-1"),
        },
        headers={"X-Device": "yes", "Connection": "close, X-Private", "X-Private": "secret"},
    )


async def _upload(request: Request) -> Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse({"sha256": digest.hexdigest(), "size": size}, status_code=201)


async def _bytes(request: Request) -> Response:
    size = int(request.path_params["size"])

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left:
            block = BLOCK[: min(left, len(BLOCK))]
            left -= len(block)
            yield block

    headers = {"Content-Length": str(size)} if request.query_params.get("chunked") != "1" else {}
    return StreamingResponse(body(), headers=headers, media_type="application/octet-stream")


async def _slow_head(_request: Request) -> Response:
    await asyncio.sleep(2.5)  # beyond the proxy's 1 s in the tests
    return Response(b"late")


async def _stall(_request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"first part;"
        await asyncio.sleep(60)
        yield b"never"

    return StreamingResponse(body(), headers={"Content-Length": "1000"})


def device_app() -> Starlette:
    """The routes the proxy tests call on the device."""
    return Starlette(
        routes=[
            Route("/echo/{rest:path}", _echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
            Route("/upload", _upload, methods=["POST", "PUT"]),
            Route("/bytes/{size:int}", _bytes, methods=["GET", "HEAD"]),
            Route("/slow-head", _slow_head),
            Route("/stall", _stall),
        ]
    )
