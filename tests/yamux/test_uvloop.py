"""The session on uvloop, run in a subprocess (the test session's loop is asyncio's)."""

from __future__ import annotations

import asyncio
import sys


async def test_sessions_move_data_intact_on_uvloop():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.yamux.uvloop_check",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "ok"
