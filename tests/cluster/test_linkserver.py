"""The accepting side's dispatch: each link stream handed by its kind to a registered handler.

Sessions over an in-memory feed pair (no sockets); the handlers are plain functions
standing in for the features' (the real ones run in tests/cluster/test_link.py).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from visiona.cluster.link import LinkAcceptor
from visiona.cluster.linkserver import LinkHandlers
from visiona.cluster.linkwire import END_OF_BODY, VERSION, body_chunk, encode_head, read_head
from visiona.kit.errors import ConflictError
from visiona.yamux import FeedTransport, Session


def _feed_pair() -> tuple[FeedTransport, FeedTransport]:
    async def to_right(chunk: bytes) -> None:
        right.feed_data(chunk)

    async def to_left(chunk: bytes) -> None:
        left.feed_data(chunk)

    def close_left() -> None:
        right.connection_lost(None)

    def close_right() -> None:
        left.connection_lost(None)

    left = FeedTransport(to_right, close_left, max_message=100_000)
    right = FeedTransport(to_left, close_right, max_message=100_000)
    return left, right


@pytest.fixture
async def linked() -> AsyncIterator[tuple[Session, LinkHandlers]]:
    """A dialler's session whose streams the accepting side serves with fresh handlers."""
    left, right = _feed_pair()
    dialer = Session(left, client=True)
    acceptor, handlers = LinkAcceptor(), LinkHandlers()
    serving = asyncio.get_running_loop().create_task(
        acceptor.serve(Session(right, client=False), "peer", handlers.serve)
    )
    yield dialer, handlers
    await dialer.close()
    await acceptor.close()
    await serving


async def _exchange(
    session: Session, head: dict[str, Any], *rest: bytes
) -> tuple[dict[str, Any], bytes]:
    stream = await session.open_stream()
    stream.write(encode_head(head))
    for data in rest:
        stream.write(data)
    answer = await read_head(stream)
    body = b""
    while chunk := await stream.read(65536):
        body += chunk
    return answer, body


def _call(kind: str, path: str, **extra: Any) -> dict[str, Any]:
    return {
        "v": VERSION,
        "kind": kind,
        "hop": 1,
        "user": str(uuid.uuid4()),
        "org": str(uuid.uuid4()),
        "path": path,
        "body": {"n": 1},
        "request_id": None,
        **extra,
    }


async def test_a_call_goes_to_the_handler_registered_for_its_kind(linked):
    session, handlers = linked
    seen: list[tuple[str, uuid.UUID, uuid.UUID, dict[str, Any]]] = []

    async def deployments(
        path: str, user_id: uuid.UUID, org_id: uuid.UUID, body: dict[str, Any]
    ) -> None:
        seen.append((path, user_id, org_id, body))

    handlers.call("deployments", deployments)
    head = _call("deployments", "/deployments/x/transfer")
    answer, _ = await _exchange(session, head)
    assert answer["status"] == 200
    caller = uuid.UUID(head["user"]), uuid.UUID(head["org"])
    assert seen == [("/deployments/x/transfer", *caller, {"n": 1})]


async def test_a_handlers_error_is_answered_with_its_status_and_code(linked):
    session, handlers = linked

    async def refuse(
        path: str, user_id: uuid.UUID, org_id: uuid.UUID, body: dict[str, Any]
    ) -> None:
        raise ConflictError("busy")

    handlers.call("deployments", refuse)
    answer, body = await _exchange(session, _call("deployments", "/deployments/x/transfer"))
    assert (answer["status"], answer["code"]) == (409, "conflict")
    assert json.loads(body)["error"]["code"] == "conflict"


async def test_a_kind_nobody_handles_is_404_and_another_hop_400(linked):
    session, _ = linked
    unknown, _ = await _exchange(session, _call("fleet", "/fleet/rollout"))
    assert (unknown["status"], unknown["code"]) == (404, "not_found")
    twice, _ = await _exchange(session, _call("fleet", "/fleet/rollout", hop=2))
    assert (twice["status"], twice["code"]) == (400, "bad_request")


async def test_a_proxied_request_runs_through_the_proxy_handler_with_its_body(linked):
    session, handlers = linked
    device, user, org = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async def here(
        request: Request,
        *,
        device_id: uuid.UUID,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        target: bytes,
        prefix: str,
        api_key_id: uuid.UUID | None = None,
    ) -> Response:
        body = await request.body()
        assert (device_id, user_id, org_id, target, prefix) == (device, user, org, b"/s?x=1", "/p")
        assert api_key_id is None  # the header names no key: a user's own request
        return Response(body[::-1], status_code=201, headers={"x-seen": request.method})

    handlers.proxy(here)
    head = {
        "v": VERSION,
        "kind": "proxy",
        "hop": 1,
        "user": str(user),
        "org": str(org),
        "request_id": "r1",
        "client": "203.0.113.7",
        "scheme": "https",
        "prefix": "/p",
        "device": str(device),
        "method": "POST",
        "target": "/s?x=1",
        "headers": [["content-length", "5"]],
    }
    stream = await session.open_stream()
    stream.write(encode_head(head))
    stream.writelines(body_chunk(b"hello"))
    stream.write(END_OF_BODY)
    answer = await read_head(stream)
    body = b""
    while chunk := await stream.read(65536):
        body += chunk
    stream.close()
    assert answer["status"] == 201
    assert ["x-seen", "POST"] in answer["headers"]
    assert body == b"olleh"


def test_proxy_is_not_a_call_kind():
    async def nothing(
        path: str, user_id: uuid.UUID, org_id: uuid.UUID, body: dict[str, Any]
    ) -> None:
        return None

    with pytest.raises(ValueError, match="proxy"):
        LinkHandlers().call("proxy", nothing)
