"""A server asked to stop (SIGTERM) ends its open event streams first: they never hold
the shutdown for uvicorn's graceful timeout."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from tests.support.api import signup
from tests.support.events import open_stream
from tests.support.node import serve_process, sqlite_env


async def test_sigterm_with_an_open_stream_ends_it_and_stops_promptly(tmp_path: Path) -> None:
    with serve_process(sqlite_env(tmp_path)) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
            user = await signup(http)
            async with open_stream(http, user.headers) as stream:
                started = time.monotonic()
                node.proc.terminate()  # SIGTERM
                try:
                    await stream.quiet(8)
                    ended = False
                except (EOFError, httpx.HTTPError):
                    ended = True
                code = await asyncio.to_thread(node.proc.wait, 30)
                elapsed = time.monotonic() - started
    log = node.text()
    assert ended, "the stream stayed open after SIGTERM"
    assert code in {0, -signal.SIGTERM}, log[-3000:]
    assert elapsed < 5, f"stopping took {elapsed:.1f}s"
    assert "Traceback" not in log, log[-3000:]
    assert " ERROR " not in log, log[-3000:]
