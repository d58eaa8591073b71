"""File descriptors of `visiona serve`: raised at start, headroom kept for the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.support.api import signup
from tests.support.node import nofile_limit, serve_process, sqlite_env
from tests.support.tunnel import paired_agent_token, wait_for

SHORT = "new connections are being refused"


async def _wait_log(text: str, read: Callable[[], str], limit: float = 30) -> None:
    async with asyncio.timeout(limit):
        while text not in read():  # noqa: ASYNC110 - a log file announces nothing
            await asyncio.sleep(0.05)


async def test_serve_raises_the_soft_limit_and_keeps_descriptors_for_the_api(
    tmp_path: Path,
) -> None:
    reserve = 130
    env = sqlite_env(
        tmp_path,
        tunnel_fd_reserve=str(reserve),
        tunnel_status_interval="0.3",
        tunnel_ping_interval="300",  # these agents answer no keepalive
    )
    with serve_process(env, preexec=nofile_limit(100, 150)) as node:
        assert "file descriptors: soft limit 150 (raised from 100); up to 20 tunnels" in (
            node.text()
        )
        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=node.url, timeout=30))
            user = await signup(http)
            tokens = [(await paired_agent_token(http, user))[1] for _ in range(21)]
            tunnels: list[ClientConnection] = []
            for token in tokens[:20]:
                auth = {"Authorization": f"Bearer {token}"}
                tunnels.append(
                    await stack.enter_async_context(connect(node.ws_url, additional_headers=auth))
                )
            # the 21st tunnel would eat the reserve: refused before the handshake
            with pytest.raises(InvalidStatus) as refused:
                await connect(
                    node.ws_url, additional_headers={"Authorization": f"Bearer {tokens[20]}"}
                )
            response = refused.value.response
            assert response.status_code == 503
            assert int(response.headers["Retry-After"]) >= 1
            error = json.loads(response.body or b"{}")["error"]
            assert (error["code"], error["reason"]) == ("tunnel_unavailable", "capacity")
            # the API and the health check still answer, the tunnels are all up
            assert (await http.get("/healthz")).status_code == 200

            async def all_online() -> bool:
                listed = await http.get("/api/v1/devices", headers=user.headers)
                assert listed.status_code == 200
                online = [d for d in listed.json()["items"] if d["remote_status"] == "online"]
                return len(online) == 20

            await wait_for(all_online)
            metrics = (await http.get("/metrics")).text
            assert 'visiona_tunnel_upgrades_total{answer="503"} 1.0' in metrics
            assert 'visiona_tunnel_upgrades_total{answer="101"} 20.0' in metrics

        # plain connections, not tunnels, can still exhaust the process: one line a minute
        hogs = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(200)]
        try:
            await _wait_log(SHORT, node.text)
            await asyncio.sleep(2)  # several watch intervals (0.3 s) later, still one line
            assert node.text().count(SHORT) == 1
        finally:
            for hog in hogs:
                hog.close()
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
            assert (await http.get("/healthz")).status_code == 200
