"""TCP streams on the agent: ``GET /visiona/tcp/{port}`` (docs/tunnel-protocol.md §18).

The cloud opens a yamux stream that starts with a small HTTP/1.1 head::

    GET /visiona/tcp/22 HTTP/1.1
    Host: device
    Connection: Upgrade
    Upgrade: visiona-tcp

The agent answers it itself, never passing the head to its local service:

- the port is in its ``--allow-port`` list and 127.0.0.1:port accepts the connection:
  ``101 Switching Protocols`` with ``Upgrade: visiona-tcp``, then raw bytes both ways
  with half-close (the forwarder of :mod:`visiona.agent.forward`);
- the port is not allowed: ``403`` ``port_not_allowed`` with ``X-Visiona-Refused: port``,
  without touching the port;
- nothing accepts on the port: ``502`` ``port_unreachable``;
- a malformed head: ``400`` ``bad_request``.

Every answer but the 101 carries a small JSON error body and ends the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging

from visiona.agent.forward import forward_stream
from visiona.agent.policy import Policy
from visiona.wire import REFUSED_HEADER, TCP_PATH, TCP_UPGRADE
from visiona.yamux import Stream, YamuxError

_LOGGER = logging.getLogger(__name__)
#: How a TCP stream starts (the check :func:`visiona.agent.deploy.dispatch_stream` makes).
MARKER = f"GET {TCP_PATH}".encode("ascii")
_HEAD_LIMIT = 4096
_READ = 4096
#: The answer that opens the byte stream.
SWITCHED = (
    f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {TCP_UPGRADE}\r\n\r\n"
).encode("ascii")
_REASONS = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}
#: The only address a TCP stream ever reaches.
LOOPBACK = "127.0.0.1"


class _RefusalError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


async def handle_tcp(stream: Stream, data: bytes, policy: Policy) -> None:
    """Serve one TCP stream (``data``: what was already read of it) under ``policy``."""
    try:
        head, rest = await _read_head(stream, data)
        port = _port_of(head)
    except _RefusalError as err:
        _answer(stream, err)
        return
    except (YamuxError, asyncio.IncompleteReadError):
        stream.reset()
        return
    if not policy.allows_port(port):
        _LOGGER.info("agent: refused a TCP stream to port %s (not in --allow-port)", port)
        _answer(
            stream,
            _RefusalError(
                403,
                "port_not_allowed",
                f"The device's agent does not allow port {port} (visiona agent --allow-port).",
            ),
            refused=True,
        )
        return
    _LOGGER.info("agent: TCP stream %s to port %s", stream.stream_id, port)

    def unreachable(err: OSError) -> None:
        reason = err.strerror or type(err).__name__
        _answer(
            stream,
            _RefusalError(502, "port_unreachable", f"Nothing accepts on port {port} ({reason})."),
        )

    await forward_stream(
        stream, LOOPBACK, port, rest, connected=SWITCHED, on_unreachable=unreachable
    )


async def _read_head(stream: Stream, data: bytes) -> tuple[bytes, bytes]:
    """The head up to its blank line, and the bytes after it (the client's first bytes)."""
    while b"\r\n\r\n" not in data:
        if len(data) > _HEAD_LIMIT:
            raise _RefusalError(400, "bad_request", "The TCP stream's head is too large.")
        more = await stream.read(_READ)
        if not more:
            raise asyncio.IncompleteReadError(data, None)
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    if len(head) > _HEAD_LIMIT:
        raise _RefusalError(400, "bad_request", "The TCP stream's head is too large.")
    return head, rest


def _port_of(head: bytes) -> int:
    """The port of ``GET /visiona/tcp/{port} HTTP/1.1`` with ``Upgrade: visiona-tcp``."""
    line, *fields = head.split(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1].startswith(TCP_PATH.encode()):
        raise _RefusalError(400, "bad_request", "Not a TCP stream head.")
    upgrade = [
        value.strip().lower()
        for name, _, value in (field.partition(b":") for field in fields)
        if name.strip().lower() == b"upgrade"
    ]
    if upgrade != [TCP_UPGRADE.encode()]:
        raise _RefusalError(400, "bad_request", f"A TCP stream needs Upgrade: {TCP_UPGRADE}.")
    digits = parts[1].removeprefix(TCP_PATH.encode())
    if not digits.isdigit() or len(digits) > 5 or not 1 <= int(digits) <= 65535:
        raise _RefusalError(400, "bad_request", "The port is not a number from 1 to 65535.")
    return int(digits)


def _answer(stream: Stream, refusal: _RefusalError, *, refused: bool = False) -> None:
    """Answer with an error (never reaching any port) and end the stream."""
    payload = json.dumps(
        {"error": {"code": refusal.code, "message": refusal.message}}, separators=(",", ":")
    ).encode()
    head = (
        f"HTTP/1.1 {refusal.status} {_REASONS.get(refusal.status, 'Error')}\r\n"
        + (f"{REFUSED_HEADER}: port\r\n" if refused else "")
        + "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    try:
        stream.write(head + payload)
        stream.write_eof()
    except YamuxError:
        stream.reset()
        return
    stream.close()
