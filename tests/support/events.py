"""Helpers for event stream tests: open ``GET /events`` and read its frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

API = "/api/v1"


@dataclass
class Frame:
    """One Server-Sent Event (comments are not frames)."""

    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> dict[str, Any]:
        """The data as JSON."""
        body: dict[str, Any] = json.loads(self.data)
        return body


@dataclass
class Stream:
    """An open stream: its response and a reader of its frames."""

    response: httpx.Response
    lines: AsyncIterator[str]
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    async def next(self, within: float = 10.0) -> Frame:
        """The next frame (``TimeoutError`` after ``within`` seconds)."""
        async with asyncio.timeout(within):
            return await self._frame()

    async def frames(self, count: int, within: float = 10.0) -> list[Frame]:
        """The next ``count`` frames."""
        return [await self.next(within) for _ in range(count)]

    async def until(self, event: str, within: float = 10.0) -> Frame:
        """The next frame of type ``event`` (others are skipped)."""
        async with asyncio.timeout(within):
            while True:
                found = await self._frame()
                if found.event == event:
                    return found

    async def quiet(self, within: float) -> list[Frame]:
        """The frames that arrive within ``within`` seconds (expected: none)."""
        seen: list[Frame] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while True:
                    seen.append(await self._frame())
        return seen

    async def _frame(self) -> Frame:
        frame = Frame()
        data: list[str] = []
        started = False
        async for line in self.lines:
            if not line:
                if started:
                    frame.data = "\n".join(data)
                    return frame
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if not name:
                self.comments.append(value)
            elif name == "retry":
                self.retry = int(value)
            else:
                started = True
                if name == "data":
                    data.append(value)
                elif name == "event":
                    frame.event = value
                elif name == "id":
                    frame.id = value
        raise EOFError("the stream ended")


@contextlib.asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> AsyncIterator[Stream]:
    """``GET /events`` with ``headers`` and query ``params``, open until the block ends
    (200 expected)."""
    async with http.stream(
        "GET", f"{API}/events", headers=headers or {}, params=params, timeout=30
    ) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response, response.aiter_lines())
