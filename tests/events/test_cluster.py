"""The stream is cluster-wide: every node reads the shared database, so an event made on
one node is streamed by every other, with or without Redis."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest

from testkit.live import serve_app
from tests.support.api import signup
from tests.support.devices import API, paired_device
from tests.support.events import open_stream
from tests.support.settings import make_settings
from visiona.app import create_app

pytestmark = pytest.mark.postgres


async def test_an_event_made_on_node_a_is_streamed_by_node_b(pg_url: str, tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for name in ("a", "b"):
            settings = make_settings(database_url=pg_url, data_dir=tmp_path / name, redis_url=None)
            servers.append(
                await stack.enter_async_context(serve_app(create_app(settings), settings))
            )
        a = await stack.enter_async_context(httpx.AsyncClient(base_url=servers[0].url, timeout=30))
        b = await stack.enter_async_context(httpx.AsyncClient(base_url=servers[1].url, timeout=30))
        user = await signup(a)
        device = await paired_device(a, user)
        async with open_stream(b, user.headers) as stream:
            renamed = await a.patch(
                f"{API}/devices/{device['device_id']}", json={"name": "On A"}, headers=user.headers
            )
            assert renamed.status_code == 200, renamed.text
            frame = await stream.until("device.renamed")
        assert frame.json()["detail"]["to"] == "On A"
