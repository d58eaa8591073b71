"""One webhook attempt against a real receiver on loopback: signed per Standard Webhooks,
2xx only, no redirects, bounded in time and in what is read, internal targets refused."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from testkit.live import LiveServer, serve_app
from tests.support.receiver import Receiver, new_secret
from visiona.webhooks.dispatcher import encode
from visiona.webhooks.sender import RESPONSE_LIMIT, Sender

BODY = encode({"type": "model.renamed", "data": {"id": "x", "detail": {"to": "é"}}})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, LiveServer[Starlette]]]:
    """A receiver verifying signatures, on 127.0.0.1 (port 0)."""
    hooks = Receiver()
    async with serve_app(hooks.app()) as server:
        yield hooks, server


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    """A sender allowed to reach loopback (the receiver), with short timeouts."""
    sending = Sender(connect_timeout=1.0, timeout=1.0, allow_private=True)
    yield sending
    await sending.aclose()


Served = tuple[Receiver, LiveServer[Starlette]]


async def test_an_attempt_is_signed_so_the_standard_library_verifies_it(
    receiver: Served, sender: Sender
) -> None:
    hooks, server = receiver
    path, secret = hooks.path()
    event_id = str(uuid.uuid4())
    attempt = await sender.attempt(
        url=f"{server.url}{path}?token=abc", secret=secret, event_id=event_id, body=BODY
    )
    assert attempt.ok
    assert attempt.status == 200
    assert attempt.response == "ok"
    assert attempt.error is None
    assert attempt.latency_ms >= 0
    assert hooks.bad_signatures == 0
    [got] = hooks.log
    assert got.event_id == event_id
    assert got.body == BODY  # exactly the bytes signed
    assert got.payload["data"]["detail"] == {"to": "é"}
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("visionA-Webhooks/")
    assert got.headers["host"] == f"127.0.0.1:{server.port}"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 10
    assert got.headers["webhook-signature"].startswith("v1,")


async def test_a_wrong_secret_fails_verification_at_the_receiver(
    receiver: Served, sender: Sender
) -> None:
    hooks, server = receiver
    path, _ = hooks.path()
    attempt = await sender.attempt(
        url=f"{server.url}{path}", secret=new_secret(), event_id="e1", body=BODY
    )
    assert not attempt.ok
    assert attempt.status == 401
    assert hooks.bad_signatures == 1


@pytest.mark.parametrize("status", [500, 404, 410])
async def test_a_status_other_than_2xx_is_a_failure(
    receiver: Served, sender: Sender, status: int
) -> None:
    hooks, server = receiver
    path, secret = hooks.path()
    hooks.status, hooks.answer = status, b"nope"
    url = f"{server.url}{path}"
    attempt = await sender.attempt(url=url, secret=secret, event_id="e", body=BODY)
    assert not attempt.ok
    assert attempt.status == status
    assert attempt.response == "nope"
    assert attempt.error == f"answered {status}"


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    receiver: Served, sender: Sender
) -> None:
    hooks, server = receiver
    path, secret = hooks.path()
    other, _ = hooks.path()
    hooks.status, hooks.headers = 302, {"location": f"{server.url}{other}"}
    url = f"{server.url}{path}"
    attempt = await sender.attempt(url=url, secret=secret, event_id="e", body=BODY)
    assert not attempt.ok
    assert attempt.status == 302
    assert attempt.error is not None
    assert "redirects are not followed" in attempt.error
    assert hooks.attempts == [(path, "e")]  # the location was never requested


async def test_a_slow_receiver_hits_the_total_timeout(receiver: Served, sender: Sender) -> None:
    hooks, server = receiver
    path, secret = hooks.path()
    hooks.delay = 2.0
    started = time.monotonic()
    url = f"{server.url}{path}"
    attempt = await sender.attempt(url=url, secret=secret, event_id="e", body=BODY)
    assert time.monotonic() - started < 3.0
    assert not attempt.ok
    assert attempt.status is None
    assert attempt.error == "no answer within 1 s"


async def _huge(_request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4096):  # 64 MiB, never read in full
            yield b"x" * 16384
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), status_code=200)


async def test_a_huge_answer_is_cut_at_one_kib() -> None:
    app = Starlette(routes=[Route("/big", _huge, methods=["POST"])])
    sender = Sender(connect_timeout=1.0, timeout=5.0, allow_private=True)
    try:
        async with serve_app(app) as server:
            started = time.monotonic()
            attempt = await sender.attempt(
                url=f"{server.url}/big", secret=new_secret(), event_id="e", body=BODY
            )
            assert time.monotonic() - started < 3.0
    finally:
        await sender.aclose()
    assert attempt.ok
    assert attempt.response == "x" * RESPONSE_LIMIT


async def test_a_refused_connection_is_a_failure_with_its_reason(sender: Sender) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    attempt = await sender.attempt(
        url=f"http://127.0.0.1:{port}/x", secret=new_secret(), event_id="e", body=BODY
    )
    assert not attempt.ok
    assert attempt.status is None
    assert attempt.error == "connection refused"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_an_internal_receiver_is_not_reached_unless_allowed(
    receiver: Served, host: str
) -> None:
    hooks, server = receiver
    path, secret = hooks.path()
    strict = Sender(connect_timeout=1.0, timeout=1.0, allow_private=False)
    try:
        attempt = await strict.attempt(
            url=f"http://{host}:{server.port}{path}", secret=secret, event_id="e", body=BODY
        )
    finally:
        await strict.aclose()
    assert not attempt.ok
    assert attempt.error is not None
    assert "internal address" in attempt.error
    assert hooks.attempts == []


async def test_the_connection_goes_to_the_vetted_address_with_the_name_as_host(
    receiver: Served, sender: Sender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name resolved once: the attempt connects to that address (DNS rebinding cannot
    swap it between the check and the connection) and sends the name as ``Host``."""
    hooks, server = receiver
    path, secret = hooks.path()
    lookups: list[str] = []

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    attempt = await sender.attempt(
        url=f"http://hooks.example.test:{server.port}{path}", secret=secret, event_id="e", body=BODY
    )
    assert attempt.ok, attempt.error
    assert lookups == ["hooks.example.test"]  # resolved once, by the check
    assert hooks.log[0].headers["host"] == f"hooks.example.test:{server.port}"
    assert json.loads(hooks.log[0].body)["type"] == "model.renamed"


@pytest.mark.parametrize("secret", ["whsec_", "whsec_!!not base64!!"])
async def test_a_broken_secret_is_a_failed_attempt_not_a_crash(
    receiver: Served, sender: Sender, secret: str
) -> None:
    hooks, server = receiver
    path, _ = hooks.path()
    url = f"{server.url}{path}"
    attempt = await sender.attempt(url=url, secret=secret, event_id="e", body=BODY)
    assert not attempt.ok
    assert attempt.error == "the endpoint's secret is not a valid whsec_ key"
    assert hooks.attempts == []
