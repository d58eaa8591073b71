"""Forwarding to the node that holds the device's tunnel, over one link per peer.

Every exchange that crosses nodes is a stream of the persistent, mutually
authenticated yamux link to the owning node (visiona/cluster/link.py): a proxied
request (:meth:`Forwarder.proxy`, both bodies streamed) or a call a feature hands
over (:meth:`Forwarder.call`, e.g. a deployment's transfer). The stream's header
carries the caller's user id, the organisation it acts in and the request id (and for
a proxied request the client's address, scheme and the cloud prefix;
docs/tunnel-protocol.md part 3); the owning node
hands it to the handler its features registered for the kind
(:class:`~visiona.cluster.linkserver.LinkHandlers`), which serves it from that node's
own tunnels only, so a request is forwarded at most once.

The HTTP internal routes (``/internal/v1/…``, checked with the token headers below)
stay for operators and older nodes; nodes of this version do not call them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from visiona.cluster.link import LinkAcceptor, LinkError, LinkPool, link_config
from visiona.cluster.linkexchange import LinkExchange, LinkResponse, NodeUnreachableError
from visiona.cluster.linkwire import VERSION, call_kind, encode_head, read_head, str_pairs
from visiona.kit.logs import request_id_var
from visiona.yamux import YamuxError

if TYPE_CHECKING:
    import uuid

    from starlette.requests import Request
    from starlette.responses import Response

    from visiona.cluster.registry import Owner
    from visiona.yamux import Stream

_LOGGER = logging.getLogger(__name__)
INTERNAL_PREFIX = "/internal/v1"
TOKEN_HEADER = "x-visiona-internal-token"  # noqa: S105 - a header name, not a secret
USER_HEADER = "x-visiona-user"
#: The organisation the forwarded caller acts in: the other node checks the device
#: against it (issue 22), as this node would.
ORG_HEADER = "x-visiona-caller-org"
#: The API key the forwarded caller authenticated with, if any (audit events name it).
KEY_HEADER = "x-visiona-caller-key"
CLIENT_HEADER = "x-visiona-client"
PROTO_HEADER = "x-visiona-proto"
PREFIX_HEADER = "x-visiona-prefix"


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
    """This node's links to the others (dialled on first use) and the links they opened here."""

    def __init__(
        self,
        token: str,
        connect_timeout: float,
        *,
        node_id: str = "",
        keepalive_interval: float = 10.0,
        keepalive_timeout: float = 10.0,
    ) -> None:
        """Links authenticate with ``token``; dialling a node takes at most ``connect_timeout``."""
        self._token = token  # for the TCP forward's own WebSocket hop (internal_headers)
        self.connect_timeout = connect_timeout
        self.config = link_config(keepalive_interval, keepalive_timeout)
        self.pool = LinkPool(
            token=token, node_id=node_id, connect_timeout=connect_timeout, config=self.config
        )
        self.acceptor = LinkAcceptor()

    async def _open(self, owner: Owner) -> Stream:
        """A new stream on the link to ``owner`` (raises :class:`LinkError` or YamuxError)."""
        session = await self.pool.link(owner.url).session()
        return await session.open_stream()

    async def open_stream(self, owner: Owner, head: dict[str, Any]) -> Stream:
        """A new stream to ``owner`` of the kind ``head["kind"]``, its header written (the
        version, hop count and request id added); the caller reads the answer and owns
        the stream. :class:`NodeUnreachableError` when the link cannot be had."""
        try:
            stream = await self._open(owner)
        except (LinkError, YamuxError) as err:
            _LOGGER.debug(
                "cluster: node %s is unreachable for a %s stream: %s",
                owner.node_id,
                head.get("kind"),
                err or type(err).__name__,
            )
            raise NodeUnreachableError() from err
        header = {"v": VERSION, "hop": 1, "request_id": request_id_var.get(), **head}
        try:
            stream.write(encode_head(header))
        except YamuxError as err:
            raise NodeUnreachableError() from err
        return stream

    async def proxy(
        self,
        owner: Owner,
        request: Request,
        *,
        device_id: uuid.UUID,
        target: bytes,
        prefix: str,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        api_key_id: uuid.UUID | None = None,
    ) -> Response:
        """Send ``request`` to ``owner`` over the link and stream its answer back."""
        try:
            stream = await self._open(owner)
        except (LinkError, YamuxError) as err:
            # The link reports its outage once; each refused request is in the access log.
            _LOGGER.debug(
                "cluster: node %s holding device %s is unreachable: %s",
                owner.node_id,
                device_id,
                err or type(err).__name__,
            )
            raise NodeUnreachableError() from err
        scope = request.scope
        client = scope.get("client")
        header = {
            "v": VERSION,
            "kind": "proxy",
            "hop": 1,
            "user": str(user_id),
            "org": str(org_id),
            "key": None if api_key_id is None else str(api_key_id),
            "request_id": request_id_var.get(),
            "client": client[0] if client else "unknown",
            "scheme": scope.get("scheme", "http"),
            "prefix": prefix,
            "device": str(device_id),
            "method": scope["method"],
            "target": target.decode("latin-1"),
            "headers": str_pairs(scope["headers"]),
        }
        has_body = any(
            k in {b"content-length", b"transfer-encoding"} and v != b"0"
            for k, v in scope["headers"]
        )
        exchange = LinkExchange(stream, request)
        status, headers = await exchange.open(encode_head(header), has_body=has_body)
        return LinkResponse(exchange, status, headers)

    def internal_headers(
        self,
        *,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        client: str | None,
        api_key_id: uuid.UUID | None = None,
    ) -> dict[str, str]:
        """The headers an internal call carries: the token, the user and their organisation,
        the API key they used (if any), the client address."""
        headers = {
            TOKEN_HEADER: self._token,
            USER_HEADER: str(user_id),
            ORG_HEADER: str(org_id),
            CLIENT_HEADER: client or "",
        }
        if api_key_id is not None:
            headers[KEY_HEADER] = str(api_key_id)
        return headers

    async def call(
        self,
        owner: Owner,
        path: str,
        *,
        user_id: uuid.UUID,
        org_id: uuid.UUID,
        body: dict[str, Any],
    ) -> Handed:
        """Hand ``body`` to ``owner``'s handler of ``path`` over the link; wait for its answer.

        ``path`` names the call as the internal HTTP route does (under ``/internal/v1``);
        its first segment is the exchange's kind (:func:`~visiona.cluster.linkwire.call_kind`).
        The owning node bounds the work itself (a deployment: file size, deploy answer
        timeout), so no timeout applies here; a link lost meanwhile ends the wait at once.
        """
        try:
            stream = await self._open(owner)
        except (LinkError, YamuxError) as err:
            _LOGGER.warning(
                "cluster: node %s is unreachable for %s: %s",
                owner.node_id,
                path,
                err or type(err).__name__,
            )
            return Handed(unreachable=True)
        header = {
            "v": VERSION,
            "kind": call_kind(path),
            "hop": 1,
            "user": str(user_id),
            "org": str(org_id),
            "request_id": request_id_var.get(),
            "path": path,
            "body": body,
        }
        try:
            stream.write(encode_head(header))
            head = await read_head(stream)
        except (YamuxError, asyncio.IncompleteReadError, ValueError) as err:
            _LOGGER.warning(
                "cluster: node %s lost during %s: %s",
                owner.node_id,
                path,
                type(err).__name__,
            )
            stream.reset()
            return Handed(lost=True)
        stream.close()
        code = head.get("code")
        return Handed(status=int(head.get("status", 0)), code=str(code) if code else None)

    async def close(self) -> None:
        """Close this node's links to the others, and theirs to it."""
        await self.pool.close()
        await self.acceptor.close()


__all__ = [
    "CLIENT_HEADER",
    "INTERNAL_PREFIX",
    "KEY_HEADER",
    "ORG_HEADER",
    "PREFIX_HEADER",
    "PROTO_HEADER",
    "TOKEN_HEADER",
    "USER_HEADER",
    "Forwarder",
    "Handed",
    "NodeUnreachableError",
    "token_matches",
]
