"""Server-Sent Events on the wire: the frames and the streaming response.

:class:`EventStreamResponse` sends ``text/event-stream`` frames from an async iterator
of bytes while it watches the connection: a client that goes away ends the iterator
at once (its ``finally`` blocks run), without waiting for the next frame to fail. The
headers turn off caching and proxy buffering (``X-Accel-Buffering: no`` for nginx).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

_LOGGER = logging.getLogger(__name__)
MEDIA_TYPE = "text/event-stream"


def frame(data: str, *, event: str | None = None, event_id: str | None = None) -> bytes:
    """One event: ``id:``, ``event:`` and one ``data:`` line per line of ``data``."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    """A comment line (a keep-alive: clients ignore it, proxies see traffic)."""
    return f": {text}\n\n".encode()


def retry(milliseconds: int) -> bytes:
    """The reconnection delay a client should use."""
    return f"retry: {milliseconds}\n\n".encode()


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response fed by ``frames`` until it ends or the client leaves."""

    media_type = MEDIA_TYPE

    def __init__(self, frames: AsyncIterator[bytes], headers: dict[str, str] | None = None):
        """Stream ``frames`` (each one or more complete SSE frames)."""
        super().__init__(
            frames,
            status_code=200,
            headers={
                "Cache-Control": "no-cache, no-store",
                "X-Accel-Buffering": "no",
                **(headers or {}),
            },
            media_type=MEDIA_TYPE,
        )
        self._frames = frames

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002 - ASGI
        """Send the head, then the frames while watching for the client's disconnect."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        sender = asyncio.ensure_future(self._send_frames(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                task.cancel()
            for task in (sender, watcher):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            await _aclose(self._frames)
        if sender not in done:
            return  # the client left
        failure = sender.exception()
        if failure is not None and not isinstance(failure, OSError):
            raise failure  # the edge's to handle (HEAD's dropped body; a bug: logged)
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_frames(self, send: Send) -> None:
        async for chunk in self._frames:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _aclose(frames: AsyncIterator[bytes]) -> None:
    close = getattr(frames, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # a cleanup failure must not fail the response
            _LOGGER.exception("event stream cleanup failed")
