"""The accepting side of the node link: ``/internal/v1/link`` and the exchanges it carries.

A peer node upgrades to a WebSocket here with its nonce; this node answers with its
own, checks the peer's proof (constant time) and only then sends its proof back
(docs/tunnel-protocol.md §18). A link that cannot authenticate is closed with 4401
and logged once. The authenticated WebSocket carries a yamux session in which this
node is the server: each stream the peer opens is one exchange, served here from
this node's own tunnels only (never forwarded again: the one-hop rule):

- ``proxy``: the request runs through :func:`visiona.tunnel.endpoints.proxy_local`
  exactly as a local one (admission, audit, errors), its body read from the stream,
  its answer written back: a head, the body raw, FIN when complete, RST when not.
- ``deploy``: the deployment's transfer runs through this node's tunnel; the answer
  is a head with the HTTP status and error code the internal route would give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket  # at run time: FastAPI reads the annotation

from visiona.cluster.deployments import model_file_of, run_here
from visiona.cluster.link import HANDSHAKE_TIMEOUT, MAX_MESSAGE
from visiona.cluster.linkwire import (
    CLOSE_AUTH_FAILED,
    LINK_PATH,
    MAX_HEAD,
    NODE_HEADER,
    NONCE_HEADER,
    NONCE_SIZE,
    VERSION,
    LinkProtocolError,
    encode_head,
    latin1_pairs,
    parse_nonce,
    proof,
    proof_matches,
    read_chunk,
    read_head,
)
from visiona.deployments import repository as deployments_repository
from visiona.deployments import service as deployments
from visiona.deployments.schemas import DeploymentStatus
from visiona.kit.database import map_db_error
from visiona.kit.errors import (
    AppError,
    BadRequestError,
    NotFoundError,
    StorageUnavailableError,
)
from visiona.kit.logs import end_incomplete_on_purpose, request_id_var
from visiona.kit.websocket import direct_opener
from visiona.tunnel.endpoints import hub_of, proxy_local
from visiona.tunnel.errors import DeviceOfflineError
from visiona.yamux import ByteTransport, FeedTransport, Session, YamuxError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from starlette.types import Message, Scope

    from visiona.cluster.service import Cluster
    from visiona.deployments.repository import Deployment
    from visiona.kit.runtime import Runtime
    from visiona.yamux import Stream

_LOGGER = logging.getLogger(__name__)
#: Largest request body chunk accepted from a peer (the forwarding node sends what
#: its HTTP server received: far less).
_MAX_CHUNK = 16 * 1024 * 1024
_HEAD_TIMEOUT = 30.0


async def link_endpoint(websocket: WebSocket) -> None:
    """A peer node's link: mutual proof of the internal token, then a yamux session."""
    runtime: Runtime = websocket.app.state.runtime
    cluster = runtime.cluster
    peer = websocket.client.host if websocket.client else "unknown"
    theirs = parse_nonce(websocket.headers.get(NONCE_HEADER))
    if cluster is None or theirs is None:
        await websocket.send_denial_response(
            JSONResponse(NotFoundError().body(), status_code=NotFoundError.status_code)
        )
        end_incomplete_on_purpose()  # a denial is a complete answer; uvicorn thinks not
        return
    forwarder = cluster.forwarder
    named = websocket.headers.get(NODE_HEADER, "?")[:64]
    peer = f"{peer} ({named})"
    ours = secrets.token_bytes(NONCE_SIZE)
    await websocket.accept(
        headers=[
            (NONCE_HEADER.encode(), ours.hex().encode()),
            (NODE_HEADER.encode(), cluster.registry.node_id.encode()),
        ]
    )
    given: bytes | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            message = await websocket.receive()
            given = message.get("bytes") if message["type"] == "websocket.receive" else None
    expected = proof(cluster.token, dialer=True, dialer_nonce=theirs, acceptor_nonce=ours)
    if not proof_matches(expected, given):
        forwarder.acceptor.refused(peer, "no valid proof of the internal token")
        with contextlib.suppress(Exception):  # the peer may be gone already
            await websocket.close(CLOSE_AUTH_FAILED, "link authentication failed")
        return
    await websocket.send_bytes(
        proof(cluster.token, dialer=False, dialer_nonce=theirs, acceptor_nonce=ours)
    )
    await _run_link(websocket, runtime, cluster, peer)


async def _run_link(websocket: WebSocket, runtime: Runtime, cluster: Cluster, peer: str) -> None:
    """Carry the authenticated link's session until it ends."""
    opener = direct_opener(websocket.scope)
    feed: FeedTransport | None = None
    transport: ByteTransport
    if opener is not None:  # `visiona serve`: the protocol feeds the session itself
        transport = opener(lambda: (1000, ""), MAX_MESSAGE)
    else:

        async def send(data: bytes) -> None:
            await websocket.send({"type": "websocket.send", "bytes": data})

        async def close() -> None:
            await websocket.close()

        feed = FeedTransport(send, close, max_message=MAX_MESSAGE)
        transport = feed
    session = Session(transport, client=False, config=cluster.forwarder.config)
    reader = (
        asyncio.get_running_loop().create_task(_read_loop(websocket, feed))
        if feed is not None
        else None
    )

    async def handle(stream: Stream) -> None:
        await serve_stream(runtime, stream)

    try:
        await cluster.forwarder.acceptor.serve(session, peer, handle)
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _read_loop(websocket: WebSocket, feed: FeedTransport) -> None:
    """ASGI messages into the session (servers without the direct path)."""
    exc: BaseException | None = None
    try:
        while True:
            message = await websocket.receive()
            data = message.get("bytes") if message["type"] == "websocket.receive" else None
            if data is None:
                break
            feed.feed_data(data)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # noqa: BLE001 - any receive failure ends the link, reported below
        exc = err
    feed.connection_lost(exc)


# -- one stream: one exchange ----------------------------------------------------------
async def serve_stream(runtime: Runtime, stream: Stream) -> None:
    """Serve one exchange a peer opened: read its header, run it here, answer."""
    try:
        async with asyncio.timeout(_HEAD_TIMEOUT):
            head = await read_head(stream)
    except (YamuxError, asyncio.IncompleteReadError, LinkProtocolError, TimeoutError) as err:
        _LOGGER.info("cluster: unreadable link exchange: %s", type(err).__name__)
        stream.reset()
        return
    request_id_var.set(str(head.get("request_id") or "") or None)  # this task's own context
    kind = head.get("kind") if head.get("v") == VERSION and head.get("hop") == 1 else None
    serve = _SERVE.get(str(kind))
    try:
        if serve is None:
            raise_unknown()
        else:
            await serve(runtime, stream, head)
    except (AppError, LinkProtocolError, ValueError) as err:
        await _answer_error(stream, err)
    except YamuxError:
        stream.reset()
    except Exception as err:
        mapped = map_db_error(err)
        if mapped is None:
            _LOGGER.exception("cluster: link exchange failed")
            mapped = AppError()
        await _answer_error(stream, mapped)


def raise_unknown() -> None:
    """An exchange of another version, kind or hop count: 400."""
    raise BadRequestError("Unsupported link exchange.")


async def _answer_error(stream: Stream, err: Exception) -> None:
    """Answer ``err`` as the JSON error body the HTTP API would give."""
    if not isinstance(err, AppError):
        err = BadRequestError("Malformed link exchange.")
    body = json.dumps(err.body()).encode()
    headers = [
        ["content-type", "application/json"],
        ["content-length", str(len(body))],
        *([k, v] for k, v in err.headers.items()),
    ]
    code = err.body()["error"]["code"]
    with contextlib.suppress(YamuxError):
        stream.write(encode_head({"status": err.status_code, "headers": headers, "code": code}))
        stream.write(body)
        stream.close()


class _LinkReceive:
    """ASGI ``receive`` over the stream: the body's chunks, then the forwarder's end."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._body_done = False

    async def __call__(self) -> Message:
        stream = self._stream
        try:
            if not self._body_done:
                chunk = await read_chunk(stream, _MAX_CHUNK)
                if chunk:
                    return {"type": "http.request", "body": chunk, "more_body": True}
                self._body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            # The forwarding node sends FIN once it has the whole answer, RST when its
            # client went away: either is the end of the request.
            while await stream.read(MAX_HEAD):
                pass
        except (YamuxError, asyncio.IncompleteReadError, LinkProtocolError):
            pass
        return {"type": "http.disconnect"}


class _LinkSend:
    """ASGI ``send`` onto the stream: the head, the body raw, FIN when complete."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self.complete = False

    async def __call__(self, message: Message) -> None:
        stream = self._stream
        if message["type"] == "http.response.start":
            headers = [
                [k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])
            ]
            stream.write(encode_head({"status": message["status"], "headers": headers}))
            return
        if message["type"] != "http.response.body":
            return
        body = message.get("body", b"")
        if body:
            stream.write(body)
        if not message.get("more_body", False):
            self.complete = True
            stream.write_eof()
        await stream.drain()


async def _serve_proxy(runtime: Runtime, stream: Stream, head: dict[str, Any]) -> None:
    """Run a forwarded proxied request through this node's tunnel, as a local one."""
    try:
        user_id = uuid.UUID(str(head["user"]))
        device_id = uuid.UUID(str(head["device"]))
        target = str(head["target"]).encode("latin-1")
        prefix = str(head["prefix"])
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": str(head["method"]),
            "scheme": "https" if head.get("scheme") == "https" else "http",
            "path": LINK_PATH,
            "raw_path": LINK_PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": latin1_pairs(head["headers"]),
            "client": (str(head.get("client") or "unknown"), 0),
            "server": None,
            "state": {},
        }
    except (KeyError, UnicodeEncodeError, ValueError) as err:
        raise LinkProtocolError("malformed proxy header") from err
    receive, send = _LinkReceive(stream), _LinkSend(stream)
    request = Request(scope, receive)
    try:
        response = await proxy_local(
            runtime, request, device_id=device_id, user_id=user_id, target=target, prefix=prefix
        )
    except YamuxError:
        raise
    except Exception as err:
        mapped = err if isinstance(err, AppError) else map_db_error(err)
        if mapped is None:
            raise
        await _answer_error(stream, mapped)
        return
    try:
        await response(scope, receive, send)
    except YamuxError:
        send.complete = False
    if send.complete:
        stream.close()
    else:
        stream.reset()


async def _serve_deploy(runtime: Runtime, stream: Stream, head: dict[str, Any]) -> None:
    """Run a deployment recorded by the peer through this node's tunnel; answer its outcome."""
    try:
        user_id = uuid.UUID(str(head["user"]))
        deployment_id = uuid.UUID(str(head["deployment"]))
        body = head["model"]
    except (KeyError, ValueError) as err:
        raise LinkProtocolError("malformed deploy header") from err
    record = await transfer_here(
        runtime, deployment_id, user_id, body if isinstance(body, dict) else {}
    )
    with contextlib.suppress(YamuxError):
        stream.write(encode_head({"status": 200, "headers": [], "code": None}))
        stream.close()
    _LOGGER.debug("cluster: deployment %s handed over the link: %s", record.id, record.status)


async def transfer_here(
    runtime: Runtime, deployment_id: uuid.UUID, user_id: uuid.UUID, body: dict[str, Any]
) -> Deployment:
    """Transfer a deployment recorded by another node through this node's tunnel only.

    The record succeeded, or the deployment's error is raised (with the record).
    """
    try:
        model = model_file_of(body)
    except ValueError as err:
        raise BadRequestError("Malformed model file.") from err
    storage = runtime.model_storage
    if storage is None:
        raise StorageUnavailableError()
    # unit of work: the record's check only; each state change is its own (as on one node)
    async with runtime.db.transaction() as conn:
        deployment = await deployments_repository.get_deployment(conn, deployment_id)
    if deployment is None or deployment.owner_user_id != user_id:
        raise NotFoundError("Deployment not found.")
    link = hub_of(runtime).get(deployment.device_id)
    if link is None or link.owner_user_id != user_id:
        failed = await deployments.mark(
            runtime.db, deployment.id, DeploymentStatus.FAILED, deployments.OFFLINE_REASON
        )
        raise deployments.DeploymentOfflineError(failed, DeviceOfflineError.default_message)
    record = await run_here(runtime, storage, link, deployment, model)
    if record.status != DeploymentStatus.SUCCEEDED:
        raise deployments.DeploymentFailedError(record)
    return record


_SERVE: dict[str, Callable[[Runtime, Stream, dict[str, Any]], Coroutine[Any, Any, None]]] = {
    "proxy": _serve_proxy,
    "deploy": _serve_deploy,
}
