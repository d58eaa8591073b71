"""What outsiders send never forges a log line, and no node logs a proxied query string.

Two real nodes: A writes JSON lines, B text lines; the device's tunnel is held by B, so a
proxied request sent to A is forwarded to B with httpx (whose own INFO logger would print
the full URL, query string included). Requests carry CR, LF, NUL, ESC and U+2028 in
their paths (raw bytes on the socket, so no client normalises them away), both on a
plain route and on a proxied one; afterwards every node's log is read whole.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import cast

import httpx
import pytest

from testkit.device_service import device_app
from testkit.live import LiveServer, serve_app
from testkit.nodes import Node, cluster_env, running_nodes
from testkit.servers import PostgresServer, RedisServer
from tests.support.api import signup
from tests.support.tunnel import API, connect_agent, forward_to, paired_agent_token, wait_for

SECRET = "s3cr3t-device-credential-5b1e"
FORGED = "2026-12-07 03:12:00,000 INFO visiona.access [fake] POST /api/v1/auth/login 200 1.0ms"
#: Percent-encoded controls (the server decodes them) and the raw forms they decode to.
ENCODED = {"%0d%0a": "\r\n", "%0a": "\n", "%00": "\x00", "%1b[31m": "\x1b", "%e2%80%a8": "\u2028"}
_TEXT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ |  |INFO:|WARNING:)")


@pytest.fixture(scope="module")
def nodes(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[tuple[Node, Node]]:
    """Node A (JSON log) and node B (text log) of one cluster."""
    env = cluster_env(postgres, redis_server)
    with (
        running_nodes({**env, "VISIONA_LOG_FORMAT": "json"}, "a") as (a,),
        running_nodes({**env, "VISIONA_LOG_FORMAT": "text"}, "b") as (b,),
    ):
        yield a, b


@pytest.fixture
async def device_port() -> AsyncIterator[int]:
    """The device's local HTTP service on a loopback port."""
    async with serve_app(device_app()) as service:
        yield service.port


async def _raw_get(port: int, target: str, headers: dict[str, str]) -> bytes:
    """Send ``GET target`` byte for byte (no client rewriting) and return the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n")
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


def _attacks(prefix: str) -> list[str]:
    forged = FORGED.replace(" ", "%20")
    return [f"{prefix}/nope{code}{forged}" for code in ENCODED]


async def test_control_characters_are_escaped_and_queries_never_logged_on_any_node(
    nodes: tuple[Node, Node], device_port: int
) -> None:
    a, b = nodes
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as via_a:
        user = await signup(via_a)
        device_id, token = await paired_agent_token(via_a, user)
        async with connect_agent(cast("LiveServer", b), token, forward_to(device_port)):

            async def forwarded() -> bool:
                r = await via_a.get(f"{API}/devices/{device_id}/proxy/echo/x", headers=user.headers)
                return r.status_code == 200

            await wait_for(forwarded)
            proxied = f"{API}/devices/{device_id}/proxy"
            answer = await via_a.get(f"{proxied}/echo/q?token={SECRET}&x=1", headers=user.headers)
            assert answer.status_code == 200, answer.text
            assert answer.json()["query"] == f"token={SECRET}&x=1"
            for node in (a, b):
                for target in [*_attacks(""), *_attacks(proxied), f"{proxied}/hello.json%00.txt"]:
                    status = await _raw_get(
                        node.port, target, {"Authorization": user.headers["Authorization"]}
                    )
                    assert status.startswith(b"HTTP/1.1 "), status
            # The owner's own access lines for the attacks are the last ones: wait for them.
            await wait_for(lambda: _logged(b, "hello.json"), limit=20)
            await wait_for(lambda: _logged(a, "hello.json"), limit=20)

    for node in (a, b):
        raw = node.log.read_bytes()
        text = raw.decode("utf-8")
        assert SECRET not in text, f"{node.name} logged the query string"
        assert "HTTP Request:" not in text, f"{node.name} let httpx log a request"
        for char in ("\x00", "\x1b", "\u2028", "\r"):
            assert char not in text, f"{node.name} wrote a raw {char!r}"
        for line in text.split("\n"):
            assert not line.startswith("2026-12-07 03:12:00"), f"forged line in {node.name}"
            assert "[fake]" not in line or "nope" in line, line
    # A writes JSON: every line parses, and the path kept its escapes visibly.
    for line in a.log.read_text().splitlines():
        if line.startswith("{"):
            json.loads(line)
    a_text = a.log.read_text()
    assert "/nope\\r\\n2026-12-07" in a_text or "/nope\\\\r\\\\n2026-12-07" in a_text
    # B writes text: each line is a record (timestamp first) or an indented continuation.
    b_text = b.log.read_text()
    assert "/nope\\r\\n2026-12-07 03:12:00,000 INFO visiona.access [fake]" in b_text
    assert "/nope\\x1b[31m2026" in b_text
    assert "/nope\\u20282026" in b_text
    assert "hello.json\\x00.txt" in b_text
    for line in b_text.splitlines():
        if line:
            assert _TEXT_LINE.match(line), f"not a log record: {line!r}"


async def _logged(node: Node, needle: str) -> bool:
    return needle in node.log.read_text(errors="replace")
