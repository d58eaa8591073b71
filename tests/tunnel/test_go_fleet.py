"""The Go agent fleet of the scale benches (``tunnelpeer -mode fleet``) reconnects as
``visiona agent`` does: after a refused upgrade it waits the ``Retry-After`` asked for
(plus up to half of it as jitter), after a 1001 close the reconnect hint (and then
retries failures at a steady 0.5-1 s for a while: the node is restarting), and SIGTERM
closes every tunnel with 1000 and exits 0.

The server is a WebSocket stand-in (the ``websockets`` library) that records when each
agent knocks; what a real node does with the fleet is tests/cluster/test_fleet_failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from pathlib import Path

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from testkit.gopeer import GoFleet
from visiona.wire import going_away_reason

TOKENS = [f"vst_fleet-{i}" for i in range(3)]


class StandIn:
    """A tunnel endpoint that records each agent's attempts and how its tunnels ended."""

    def __init__(self) -> None:
        """Nothing recorded yet."""
        self.attempts: dict[str, list[float]] = defaultdict(list)
        self.closes: list[int | None] = []

    def token(self, headers: Headers) -> str:
        """The bearer token of an upgrade."""
        return headers.get("Authorization", "").removeprefix("Bearer ")


@pytest.fixture
def stand_in() -> StandIn:
    """A fresh record."""
    return StandIn()


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    """The fleet's session tokens, one per line."""
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(TOKENS) + "\n")
    return path


@contextlib.asynccontextmanager
async def _serving(
    stand_in: StandIn,
    refuse: Callable[[str], Response | None],
    handle: Callable[[ServerConnection], Awaitable[None]],
) -> AsyncIterator[Server]:
    def process_request(_connection: ServerConnection, request: Request) -> Response | None:
        token = stand_in.token(request.headers)
        stand_in.attempts[token].append(time.monotonic())
        return refuse(token)

    async def handler(connection: ServerConnection) -> None:
        await handle(connection)
        stand_in.closes.append(connection.close_code)

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        yield server


def _url(server: Server) -> str:
    port = next(iter(server.sockets)).getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def _all_up(fleet: GoFleet) -> None:
    await fleet.until(lambda p: p["up"] == len(TOKENS), limit=30)


async def test_a_refused_upgrade_is_tried_again_after_its_retry_after_and_sigterm_closes_1000(
    go_tunnel_peer: Path, stand_in: StandIn, tokens_file: Path
) -> None:
    def refuse(token: str) -> Response | None:
        if len(stand_in.attempts[token]) > 1:
            return None
        return Response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "Service Unavailable",
            Headers({"Retry-After": "1", "Content-Length": "0"}),
            b"",
        )

    async def hold(connection: ServerConnection) -> None:
        await connection.wait_closed()

    async with _serving(stand_in, refuse, hold) as server:
        fleet = await GoFleet.start(go_tunnel_peer, _url(server), tokens_file)
        try:
            await _all_up(fleet)
            assert fleet.progress["refused"] == len(TOKENS)
            assert fleet.progress["statuses"] == {"503": len(TOKENS)}
        finally:
            code = await fleet.stop()
        assert code == 0
        assert fleet.stopped.is_set()
        async with asyncio.timeout(10):  # the stand-in's handlers see the closes
            while len(stand_in.closes) < len(TOKENS):  # noqa: ASYNC110 - polls a record
                await asyncio.sleep(0.02)
    for token in TOKENS:
        first, second = stand_in.attempts[token]
        # Retry-After: 1 plus up to half of it again (jitter); slack for a busy machine
        assert 1.0 <= second - first <= 1.5 + 1.0
    assert stand_in.closes == [1000] * len(TOKENS)


async def test_after_a_1001_close_the_agents_wait_its_reconnect_hint(
    go_tunnel_peer: Path, stand_in: StandIn, tokens_file: Path
) -> None:
    hint = 1.5
    closed_at: dict[str, float] = {}

    async def close_first(connection: ServerConnection) -> None:
        token = stand_in.token(connection.request.headers if connection.request else Headers())
        if token in closed_at:
            await connection.wait_closed()
            return
        closed_at[token] = time.monotonic()  # before the close: it waits for the handshake
        await connection.close(1001, going_away_reason(hint))

    async with _serving(stand_in, lambda _token: None, close_first) as server:
        fleet = await GoFleet.start(go_tunnel_peer, _url(server), tokens_file)
        try:
            await fleet.until(
                lambda p: p["up"] == len(TOKENS) and p["connects"] == 2 * len(TOKENS), limit=30
            )
        finally:
            await fleet.stop()
    for token in TOKENS:
        # without the hint the agent would be back after 0.25-0.5 s (the first backoff step)
        assert hint <= stand_in.attempts[token][1] - closed_at[token] <= hint + 1.0


async def test_after_a_restart_hint_failed_attempts_are_retried_at_a_steady_pace(
    go_tunnel_peer: Path, stand_in: StandIn, tokens_file: Path
) -> None:
    refusals = 4
    closed: set[str] = set()

    def refuse(token: str) -> Response | None:
        # after the hinted close: refused (no Retry-After) `refusals` times, then accepted
        if token not in closed or len(stand_in.attempts[token]) > 1 + refusals:
            return None
        return Response(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            Headers({"Content-Length": "0"}),
            b"",
        )

    async def close_first(connection: ServerConnection) -> None:
        token = stand_in.token(connection.request.headers if connection.request else Headers())
        if token in closed:
            await connection.wait_closed()
            return
        closed.add(token)
        await connection.close(1001, going_away_reason(0.2))

    async with _serving(stand_in, refuse, close_first) as server:
        fleet = await GoFleet.start(go_tunnel_peer, _url(server), tokens_file)
        try:
            await fleet.until(
                lambda p: p["up"] == len(TOKENS) and p["connects"] == 2 * len(TOKENS), limit=30
            )
        finally:
            await fleet.stop()
    for token in TOKENS:
        attempts = stand_in.attempts[token]
        assert len(attempts) == 2 + refusals
        gaps = [later - earlier for earlier, later in itertools.pairwise(attempts[1:])]
        # 0.5-1 s each (slack for a busy machine); the doubling backoff would have waited
        # 0.25-0.5, 0.5-1, 1-2 and 2-4 s
        assert all(0.5 <= gap <= 1.0 + 0.5 for gap in gaps), gaps
