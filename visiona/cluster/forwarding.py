"""Forwarding a proxied request to the node that holds the device's tunnel.

The request goes to the owner's internal route (``/internal/v1/devices/{id}/proxy/…``)
with the internal token, the caller's user id and request id and the original client
address, host, scheme and prefix; both bodies are streamed (never held whole). The
internal route only looks locally, so a request is forwarded at most once.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from starlette.responses import Response

from visiona.kit.errors import AppError
from visiona.kit.http import HOP_BY_HOP
from visiona.kit.logs import request_id_var

if TYPE_CHECKING:
    import uuid

    from starlette.requests import Request
    from starlette.types import Receive, Scope, Send

    from visiona.cluster.registry import Owner

_LOGGER = logging.getLogger(__name__)
INTERNAL_PREFIX = "/internal/v1"
TOKEN_HEADER = "x-visiona-internal-token"  # noqa: S105 - a header name, not a secret
USER_HEADER = "x-visiona-user"
CLIENT_HEADER = "x-visiona-client"
PROTO_HEADER = "x-visiona-proto"
PREFIX_HEADER = "x-visiona-prefix"
_OURS = {TOKEN_HEADER, USER_HEADER, CLIENT_HEADER, PROTO_HEADER, PREFIX_HEADER}
_DROPPED_REQUEST = {k.decode() for k in HOP_BY_HOP} | _OURS | {"x-request-id"}
_DROPPED_RESPONSE = HOP_BY_HOP | {b"x-request-id", b"date", b"server"}


class NodeUnreachableError(AppError):
    """The node holding the device's tunnel cannot be reached: 502 ``device_offline``."""

    status_code = 502
    code = "device_offline"
    default_message = "The server node holding the device's tunnel is unreachable."


@dataclass(frozen=True)
class Handed:
    """How a call handed to another node went (as this node saw it)."""

    status: int = 0
    code: str | None = None
    #: the node could not be connected to (nothing was sent)
    unreachable: bool = False
    #: the connection broke after the call was sent (the node died meanwhile)
    lost: bool = False


def token_matches(expected: str, given: str | None) -> bool:
    """Compare the internal token in constant time."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class Forwarder:
    """The HTTP client one node uses to reach the others."""

    def __init__(self, token: str, connect_timeout: float) -> None:
        """A pooled client; connecting to a node takes at most ``connect_timeout`` seconds."""
        self._token = token
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=connect_timeout),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )

    async def proxy(
        self,
        owner: Owner,
        request: Request,
        *,
        device_id: uuid.UUID,
        target: bytes,
        prefix: str,
        user_id: uuid.UUID,
    ) -> Response:
        """Send ``request`` to ``owner``'s internal proxy route and stream its answer back."""
        headers = [(k, v) for k, v in request.headers.items() if k not in _DROPPED_REQUEST]
        client = request.client.host if request.client else "unknown"
        headers += [
            (TOKEN_HEADER, self._token),
            (USER_HEADER, str(user_id)),
            (CLIENT_HEADER, client),
            (PROTO_HEADER, request.url.scheme),
            (PREFIX_HEADER, prefix),
            ("x-request-id", request_id_var.get() or ""),
        ]
        url = f"{owner.url}{INTERNAL_PREFIX}/devices/{device_id}/proxy{target.decode('latin-1')}"
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        outgoing = self._client.build_request(
            request.method,
            httpx.URL(url),
            headers=headers,
            content=request.stream() if has_body else None,
        )
        try:
            answer = await self._client.send(outgoing, stream=True)
        except httpx.TransportError as err:
            _LOGGER.warning(
                "cluster: node %s holding device %s is unreachable: %s",
                owner.node_id,
                device_id,
                type(err).__name__,
            )
            raise NodeUnreachableError() from err
        return ForwardedResponse(answer)

    def internal_headers(self, *, user_id: uuid.UUID, client: str | None) -> dict[str, str]:
        """The headers an internal call carries: the token, the user, the client address."""
        return {TOKEN_HEADER: self._token, USER_HEADER: str(user_id), CLIENT_HEADER: client or ""}

    async def call(
        self,
        owner: Owner,
        path: str,
        *,
        user_id: uuid.UUID,
        body: dict[str, Any],
    ) -> Handed:
        """POST ``body`` to ``owner``'s internal route ``path``; wait for its answer.

        The owning node bounds the work itself (a deployment: file size, deploy answer
        timeout), so no read timeout applies here.
        """
        headers = {
            TOKEN_HEADER: self._token,
            USER_HEADER: str(user_id),
            "x-request-id": request_id_var.get() or "",
        }
        url = f"{owner.url}{INTERNAL_PREFIX}{path}"
        try:
            answer = await self._client.post(url, json=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            _LOGGER.warning(
                "cluster: node %s is unreachable for %s: %s",
                owner.node_id,
                path,
                type(err).__name__,
            )
            return Handed(unreachable=True)
        except httpx.TransportError as err:
            _LOGGER.warning(
                "cluster: node %s lost during %s: %s",
                owner.node_id,
                path,
                type(err).__name__,
            )
            return Handed(lost=True)
        code = None
        if answer.status_code >= 400:
            try:
                code = str(answer.json()["error"]["code"])
            except (ValueError, KeyError, TypeError):
                code = None
        return Handed(status=answer.status_code, code=code)

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()


class ForwardedResponse(Response):
    """An ASGI response relaying another node's streamed answer."""

    def __init__(self, answer: httpx.Response) -> None:
        """Hold the open ``answer`` (head received, body not read)."""
        super().__init__(status_code=answer.status_code)
        self._answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002 - nothing to read
        """Stream the body as it arrives, then close the connection to the node."""
        answer = self._answer
        headers = [(k, v) for k, v in answer.headers.raw if k.lower() not in _DROPPED_RESPONSE]
        try:
            await send(
                {"type": "http.response.start", "status": answer.status_code, "headers": headers}
            )
            async for chunk in answer.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await answer.aclose()
