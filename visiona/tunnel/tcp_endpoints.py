"""``GET /api/v1/devices/{id}/tcp/{port}``: a WebSocket carrying one TCP connection.

The caller (``visiona forward``, or any WebSocket client) gets raw bytes to and from
``127.0.0.1:{port}`` on the device's PC, if the device's agent allows the port.

Before the upgrade, as HTTP errors with the usual body: no or bad credentials → 401
(the proxy's: a bearer token, or the session cookie from the same origin; 403
``csrf_failed`` otherwise); a malformed id or a port outside 1-65535 → 422; another
user's or an unknown device → 404; the device not connected → 502 ``device_offline``;
a port the agent reported it does not allow → 403 ``port_not_allowed``; too many
forwards open → 429 ``too_many_forwards``.

After the upgrade the cloud opens a TCP stream to the agent (docs/tunnel-protocol.md
§18). Binary messages carry the bytes (boundaries mean nothing); an **empty binary
message** ends the sender's direction (half-close): the server sends one when the
device's side ends, and a client sends one when it has nothing more to send. The
server closes the WebSocket with 1000 once both directions ended, or with:

- 4403: the agent refused the port (its ``--allow-port`` policy);
- 4401: the device was unpaired or its credentials were revoked meanwhile;
- 1001: the server is shutting down (the device's tunnel closes with it);
- 4408: idle for ``forward_idle_timeout``, or open for ``forward_max_duration``;
- 4502: nothing accepts on the port, the agent predates TCP forwarding, the device's
  tunnel dropped, or the connection on the device was reset;
- 4504: the agent did not answer the stream's header in time;
- 1003: the client sent a text message (or data after its half-close).

``forward.opened`` and ``forward.closed`` (port, bytes each way, duration, reason)
and ``forward.refused`` go to the audit trail, each in its own short transaction.

In a cluster, a node without the device's tunnel makes the checks up to the port and
carries the forward one hop to the node holding it, as one stream of the node link
(:mod:`visiona.tunnel.tcp_link`); that node admits and serves it with
:func:`serve_forward`. The internal WebSocket route
(``/internal/v1/devices/{id}/tcp/{port}``, internal token and caller in headers) stays
for operators and nodes of the previous version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from visiona.audit import service as audit
from visiona.auth.dependencies import require
from visiona.cluster.dependencies import CLUSTER, forwarded_caller
from visiona.cluster.forwarding import (
    CLIENT_HEADER,
    KEY_HEADER,
    ORG_HEADER,
    TOKEN_HEADER,
    USER_HEADER,
)
from visiona.cluster.linkwire import LinkProtocolError
from visiona.devices.dependencies import DEVICES
from visiona.kit.database import map_db_error
from visiona.kit.deps import runtime_of
from visiona.kit.errors import AppError, UnauthorizedError, ValidationFailedError
from visiona.kit.logs import end_incomplete_on_purpose
from visiona.orgs.permissions import Permission
from visiona.tunnel.dependencies import HUB
from visiona.tunnel.errors import DeviceOfflineError
from visiona.tunnel.forwards import Forward, PortNotAllowedError
from visiona.tunnel.tcp import ForwardError, ForwardRefusedError, open_tcp_stream
from visiona.tunnel.tcp_link import ForwardSocket, LinkSocket, hop
from visiona.wire import (
    CLOSE_FORWARD_TIMEOUT,
    CLOSE_FORWARD_UNREACHABLE,
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_REVOKED,
    CLOSE_UNSUPPORTED,
)
from visiona.yamux import YamuxError

if TYPE_CHECKING:
    from visiona.cluster.service import Peer
    from visiona.kit.runtime import Runtime
    from visiona.tunnel.forwards import Forwards
    from visiona.tunnel.link import TunnelLink
    from visiona.yamux import Stream

_LOGGER = logging.getLogger(__name__)
_READ_SIZE = 1024 * 1024
_MAX_REASON = 123  # bytes a WebSocket close reason may hold

router = APIRouter()
#: ``/internal/v1/devices/{id}/tcp/{port}``: included by the tunnel's internal router
internal_router = APIRouter()


def _parse(device_id: str, port: str) -> tuple[uuid.UUID, int]:
    """The path's device id and port, or the 422 FastAPI's validation would give."""
    fields: list[dict[str, Any]] = []
    try:
        device = uuid.UUID(device_id)
    except ValueError:
        device = uuid.UUID(int=0)
        fields.append(
            {"loc": ["path", "device_id"], "message": "Not a valid UUID.", "type": "uuid_parsing"}
        )
    number = int(port) if port.isdigit() and len(port) <= 5 else 0
    if not 1 <= number <= 65535:
        fields.append(
            {
                "loc": ["path", "port"],
                "message": "A TCP port is a number from 1 to 65535.",
                "type": "port_range",
            }
        )
    if fields:
        raise ValidationFailedError(fields)
    return device, number


async def _admit(  # noqa: PLR0917 - who (user, organisation), where, from where
    websocket: ForwardSocket,
    user_id: uuid.UUID,
    org_id: uuid.UUID,
    device_id: uuid.UUID,
    port: int,
    client: str | None,
    *,
    may_hop: bool,
    api_key_id: uuid.UUID | None = None,
) -> tuple[Forward, TunnelLink] | Peer:
    """Every check made before the upgrade: the admitted forward (holding its slots) and
    this node's tunnel, or (``may_hop``) the other node of the cluster holding the tunnel."""
    try:
        # unit of work: its own short read, before the upgrade (the forward holds none)
        async with _runtime(websocket).db.reading() as conn:
            device = await DEVICES.of(websocket.app).get(conn, org_id, device_id)
    except AppError:
        raise
    except Exception as err:
        mapped = map_db_error(err)
        if mapped is None:
            raise
        raise mapped from err
    hub = HUB.of(websocket.app)
    forwards = hub.forwards
    forward = Forward(
        device_id=device_id,
        org_id=device.org_id,
        user_id=user_id,
        port=port,
        api_key_id=api_key_id,
    )
    if device.tcp_ports is not None and port not in device.tcp_ports:
        forwards.refused["not_allowed"] += 1
        allowed = ", ".join(str(p) for p in device.tcp_ports) or "none"
        refusal = PortNotAllowedError(
            f"The device's agent does not allow port {port} (allowed: {allowed}; "
            "visiona agent --allow-port)."
        )
        await _record(
            _runtime(websocket), "forward.refused", forward, client, reason=refusal.message
        )
        raise refusal
    link = hub.get(device_id)
    if link is None or link.org_id != device.org_id:
        peer = await CLUSTER.of(websocket.app).peer_holding(device_id) if may_hop else None
        if peer is not None:
            return peer
        forwards.refused["offline"] += 1
        raise DeviceOfflineError()
    forwards.admit(device_id, user_id)
    forwards.add(forward)
    return forward, link


async def _deny(websocket: ForwardSocket, err: AppError) -> None:
    """Answer ``err`` instead of the upgrade."""
    await websocket.send_denial_response(
        JSONResponse(err.body(), status_code=err.status_code, headers=err.headers or None)
    )
    end_incomplete_on_purpose()  # a denial is a complete answer; uvicorn thinks not


@router.websocket("/devices/{device_id}/tcp/{port}", name="device_tcp")
async def device_tcp(websocket: WebSocket) -> None:
    """A WebSocket carrying one TCP connection to ``127.0.0.1:{port}`` on the device's PC
    (see the module doc for the errors before the upgrade and the close codes after).
    In a cluster, a node without the device's tunnel carries the forward to the node
    that holds it, as a stream of the node link (visiona/tunnel/tcp_link.py)."""
    runtime = runtime_of(websocket)
    client = websocket.client.host if websocket.client else None
    params = websocket.path_params
    try:
        device_id, port = _parse(str(params["device_id"]), str(params["port"]))
        principal = await require(Permission.PROXY)(websocket)
        admitted = await _admit(
            websocket,
            principal.user_id,
            principal.org_id,
            device_id,
            port,
            client,
            may_hop=True,
            api_key_id=principal.api_key_id,
        )
    except AppError as err:
        await _deny(websocket, err)
        return
    if not isinstance(admitted, tuple):
        settings = runtime.settings
        await hop(
            websocket,
            admitted,
            device_id=device_id,
            port=port,
            user_id=principal.user_id,
            org_id=principal.org_id,
            api_key_id=principal.api_key_id,
            client=client,
            accept_within=settings.cluster_connect_timeout + settings.forward_connect_timeout,
        )
        return
    await _run(runtime, websocket, *admitted, client)


@internal_router.websocket("/devices/{device_id}/tcp/{port}")
async def internal_device_tcp(websocket: WebSocket) -> None:
    """A forward carried by another node of the cluster (internal token and the original
    user in headers): served by this node's tunnel only, never carried further."""
    runtime = runtime_of(websocket)
    params = websocket.path_params
    try:
        if not CLUSTER.of(websocket.app).accepts(websocket.headers.get(TOKEN_HEADER)):
            raise UnauthorizedError("Missing or invalid internal token.")
        caller = forwarded_caller(
            websocket.headers.get(USER_HEADER),
            websocket.headers.get(ORG_HEADER),
            websocket.headers.get(KEY_HEADER),
        )
        device_id, port = _parse(str(params["device_id"]), str(params["port"]))
        client = websocket.headers.get(CLIENT_HEADER) or None
        admitted = await _admit(
            websocket,
            caller.user_id,
            caller.org_id,
            device_id,
            port,
            client,
            may_hop=False,
            api_key_id=caller.api_key_id,
        )
    except AppError as err:
        await _deny(websocket, err)
        return
    assert isinstance(admitted, tuple)  # noqa: S101 - may_hop=False never hops
    await _run(runtime, websocket, *admitted, client)


async def serve_forward(app: Any, stream: Stream, head: dict[str, Any]) -> None:
    """Serve a forward another node carried here on a link stream (its ``forward`` kind:
    :mod:`visiona.tunnel.tcp_link`), from this node's tunnel only, exactly as a local
    one: the same admission, limits, audit and close codes."""
    try:
        user_id = uuid.UUID(str(head["user"]))
        org_id = uuid.UUID(str(head["org"]))
        key = head.get("key")
        api_key_id = uuid.UUID(str(key)) if key else None
        client = str(head["client"]) if head.get("client") else None
    except (KeyError, ValueError) as err:
        raise LinkProtocolError("malformed forward header") from err
    socket = LinkSocket(app, stream)
    try:
        device_id, port = _parse(str(head.get("device")), str(head.get("port")))
        admitted = await _admit(
            socket,
            user_id,
            org_id,
            device_id,
            port,
            client,
            may_hop=False,
            api_key_id=api_key_id,
        )
    except AppError as err:
        await _deny(socket, err)
        return
    assert isinstance(admitted, tuple)  # noqa: S101 - may_hop=False never hops
    await _run(_runtime(socket), socket, *admitted, client)


def _runtime(websocket: ForwardSocket) -> Runtime:
    """The application's runtime (a link socket is no Starlette connection)."""
    runtime: Runtime = websocket.app.state.runtime
    return runtime


async def _run(
    runtime: Runtime,
    websocket: ForwardSocket,
    forward: Forward,
    link: TunnelLink,
    client: str | None,
) -> None:
    """Accept, serve the forward, give its slots back."""
    forwards = HUB.of(websocket.app).forwards
    try:
        await websocket.accept()
        await _serve(runtime, websocket, forward, link, forwards, client)
    finally:
        forwards.remove(forward)


async def _serve(  # noqa: PLR0917 - one forward's parts
    runtime: Runtime,
    websocket: ForwardSocket,
    forward: Forward,
    link: TunnelLink,
    forwards: Forwards,
    client: str | None,
) -> None:
    """Open the TCP stream, record it, relay until either side ends, record the end."""
    settings = runtime.settings
    try:
        stream, early = await open_tcp_stream(
            link.session, forward.port, settings.forward_connect_timeout
        )
    except ForwardError as err:
        forwards.refused[err.kind] += 1
        _LOGGER.info(
            "forward: device %s port %s not opened: %s", forward.device_id, forward.port, err
        )
        if isinstance(err, ForwardRefusedError):
            await _record(runtime, "forward.refused", forward, client, reason=err.reason)
        await _close(websocket, err.code, err.reason)
        return
    forwards.opened_one()
    forward_id = uuid.uuid4()
    # written while the bytes already flow (the connection does not wait for the trail);
    # awaited before forward.closed, which must come after it
    opened = asyncio.get_running_loop().create_task(
        _record(runtime, "forward.opened", forward, client, forward_id=forward_id)
    )
    _LOGGER.info("forward: device %s port %s opened", forward.device_id, forward.port)
    relay = _Relay(
        websocket,
        stream,
        forward,
        link,
        idle_timeout=settings.forward_idle_timeout,
        max_duration=settings.forward_max_duration,
    )
    try:
        code, reason = await relay.run(early)
    finally:
        await opened
    _LOGGER.info(
        "forward: device %s port %s closed (%s %s): %s bytes in, %s out",
        forward.device_id,
        forward.port,
        code,
        reason,
        forward.bytes_to_device,
        forward.bytes_from_device,
    )
    await _record(
        runtime,
        "forward.closed",
        forward,
        client,
        forward_id=forward_id,
        reason=reason,
        close_code=code,
        bytes_to_device=forward.bytes_to_device,
        bytes_from_device=forward.bytes_from_device,
        duration_seconds=round(forward.duration(), 3),
    )


async def _close(websocket: ForwardSocket, code: int, reason: str) -> None:
    """Close the WebSocket (a client already gone is not an error)."""
    cut = reason.encode("utf-8")[:_MAX_REASON].decode("utf-8", "ignore")
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code, cut)


async def _record(
    runtime: Runtime,
    action: str,
    forward: Forward,
    client: str | None,
    *,
    forward_id: uuid.UUID | None = None,
    **detail: object,
) -> None:
    """Write one ``forward.*`` audit event in its own short transaction (best effort: a
    forward is not refused or cut because the trail cannot be written; that is logged)."""
    body: dict[str, object] = {"port": forward.port, **detail}
    if forward_id is not None:
        body["forward_id"] = str(forward_id)
    try:
        # unit of work: its own, at the open and the end of a forward (which holds none)
        async with runtime.db.transaction() as conn:
            await audit.record(
                conn,
                action,
                actor=audit.Actor.acting(forward.user_id, forward.api_key_id),
                org_id=forward.org_id,
                target_id=forward.device_id,
                device_id=forward.device_id,
                detail=body,
                client_addr=client,
            )
    except Exception as err:  # noqa: BLE001 - the trail is best effort here; logged
        _LOGGER.warning(
            "audit: %s of device %s not recorded: %s", action, forward.device_id, type(err).__name__
        )


class _Relay:
    """Copies bytes between the WebSocket and the stream until both directions ended."""

    def __init__(
        self,
        websocket: ForwardSocket,
        stream: Stream,
        forward: Forward,
        link: TunnelLink,
        *,
        idle_timeout: float,
        max_duration: float,
    ) -> None:
        self._ws = websocket
        self._stream = stream
        self._forward = forward
        self._link = link
        self._idle = idle_timeout
        self._deadline = time.monotonic() + max_duration
        self._last = time.monotonic()
        self._end: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._up_done = False
        self._down_done = False
        self._client_gone = False

    def _finish(self, code: int, reason: str) -> None:
        if not self._end.done():
            self._end.set_result((code, reason))

    def _half_done(self) -> None:
        if self._up_done and self._down_done:
            self._finish(CLOSE_NORMAL, "closed")

    def _stream_failed(self) -> None:
        """The stream broke: say why (unpaired, tunnel gone, or reset on the device)."""
        closed = self._link.closed_by_server
        if closed is not None and closed[0] == CLOSE_REVOKED:
            self._finish(CLOSE_REVOKED, "the device was unpaired or its credentials were revoked")
        elif closed is not None and closed[0] == CLOSE_GOING_AWAY:
            self._finish(CLOSE_GOING_AWAY, "the server is shutting down")
        elif self._link.session.is_closed:
            self._finish(CLOSE_FORWARD_UNREACHABLE, "the device's tunnel dropped")
        else:
            self._finish(CLOSE_FORWARD_UNREACHABLE, "the connection on the device was reset")

    async def run(self, early: bytes) -> tuple[int, str]:
        """Relay until the forward ends; close the WebSocket; the close code and reason."""
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._up()),
            loop.create_task(self._down(early)),
            loop.create_task(self._watch()),
        ]
        try:
            code, reason = await self._end
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._up_done and self._down_done:
            self._stream.close()
        else:
            self._stream.reset()
        if not self._client_gone:
            await _close(self._ws, code, reason)
        return code, reason

    async def _up(self) -> None:
        """WebSocket → stream; an empty message is the client's half-close."""
        receive = self._ws.receive
        stream = self._stream
        forward = self._forward
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    self._client_gone = True
                    self._finish(int(message.get("code", 1005)), "the client closed")
                    return
                data = message.get("bytes")
                if data is None:
                    self._finish(CLOSE_UNSUPPORTED, "binary messages only")
                    return
                self._last = time.monotonic()
                if self._up_done:
                    if data:
                        self._finish(CLOSE_UNSUPPORTED, "data after the end of the stream")
                        return
                    continue
                if not data:
                    stream.write_eof()
                    self._up_done = True
                    self._half_done()
                    continue
                stream.write(data)
                forward.bytes_to_device += len(data)
                await stream.drain()
        except YamuxError:
            self._stream_failed()
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._client_gone = True
            self._finish(1006, "the client went away")

    async def _down(self, early: bytes) -> None:
        """Stream → WebSocket; the stream's end becomes an empty message."""
        send = self._ws.send_bytes
        stream = self._stream
        forward = self._forward
        try:
            if early:
                forward.bytes_from_device += len(early)
                await send(early)
            while chunk := await stream.read(_READ_SIZE):
                self._last = time.monotonic()
                forward.bytes_from_device += len(chunk)
                await send(chunk)
            await send(b"")
            self._down_done = True
            self._half_done()
        except YamuxError:
            self._stream_failed()
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._client_gone = True
            self._finish(1006, "the client went away")

    async def _watch(self) -> None:
        """End the forward when idle too long or open past its maximum duration."""
        while True:
            now = time.monotonic()
            if now >= self._deadline:
                self._finish(CLOSE_FORWARD_TIMEOUT, "maximum duration reached")
                return
            if now >= self._last + self._idle:
                self._finish(CLOSE_FORWARD_TIMEOUT, "idle timeout")
                return
            await asyncio.sleep(min(self._deadline, self._last + self._idle) - now)
