"""The cloud's side of a TCP stream: open it, send its header, read the agent's answer.

A TCP stream (docs/tunnel-protocol.md §18) is a yamux stream that starts with::

    GET /visiona/tcp/{port} HTTP/1.1
    Host: device
    Connection: Upgrade
    Upgrade: visiona-tcp

The agent answers ``101 Switching Protocols`` with ``Upgrade: visiona-tcp`` and then
carries raw bytes to and from 127.0.0.1:port, or answers an HTTP error and ends the
stream. The head is an ordinary HTTP request on purpose: an agent that predates TCP
streams forwards it to its local service, whose HTTP error (usually a 404) or
silence (bounded by ``answer_timeout``) becomes :class:`ForwardUnsupportedError` or
:class:`ForwardAgentTimeoutError` here, never a hang or a false success (only a
``101`` naming ``visiona-tcp`` opens the stream).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from visiona.wire import (
    CLOSE_FORWARD_AGENT_TIMEOUT,
    CLOSE_FORWARD_REFUSED,
    CLOSE_FORWARD_UNREACHABLE,
    REFUSED_HEADER,
    TCP_PATH,
    TCP_UPGRADE,
)
from visiona.yamux import YamuxError

if TYPE_CHECKING:
    from visiona.yamux import Session, Stream

_LOGGER = logging.getLogger(__name__)
_HEAD_LIMIT = 16 * 1024
_BODY_LIMIT = 4096
_SWITCHING = 101


class ForwardError(Exception):
    """The stream could not be opened: the WebSocket close ``code`` and ``reason`` to send."""

    code = CLOSE_FORWARD_UNREACHABLE
    #: the refusal's kind, for metrics and the audit trail
    kind = "unreachable"

    def __init__(self, reason: str) -> None:
        """Remember the reason (sent as the WebSocket close reason, at most 123 bytes)."""
        super().__init__(reason)
        self.reason = reason


class ForwardRefusedError(ForwardError):
    """The agent's policy does not allow the port (``403`` with ``X-Visiona-Refused``)."""

    code = CLOSE_FORWARD_REFUSED
    kind = "refused"


class ForwardUnreachableError(ForwardError):
    """The agent allows the port but nothing accepts on it, or the tunnel failed."""

    kind = "unreachable"


class ForwardUnsupportedError(ForwardError):
    """The agent answered the header as plain HTTP: it predates TCP streams."""

    kind = "unsupported"


class ForwardAgentTimeoutError(ForwardError):
    """No answer to the header in time."""

    code = CLOSE_FORWARD_AGENT_TIMEOUT
    kind = "timeout"


def stream_head(port: int) -> bytes:
    """The header that starts a TCP stream to ``port``."""
    return (
        f"GET {TCP_PATH}{port} HTTP/1.1\r\nHost: device\r\n"
        f"Connection: Upgrade\r\nUpgrade: {TCP_UPGRADE}\r\n\r\n"
    ).encode("ascii")


async def open_tcp_stream(
    session: Session, port: int, answer_timeout: float
) -> tuple[Stream, bytes]:
    """Open a TCP stream to ``port`` through ``session``; return it and any bytes the device
    already sent after the agent's ``101`` (they belong to the connection).

    Raises a :class:`ForwardError` subclass (the stream is reset or closed by then).
    """
    try:
        stream = await session.open_stream()
        stream.write(stream_head(port))
    except YamuxError as err:
        raise ForwardUnreachableError("The device's tunnel failed.") from err
    try:
        async with asyncio.timeout(answer_timeout):
            return stream, await _read_answer(stream, port)
    except TimeoutError as err:
        stream.reset()
        raise ForwardAgentTimeoutError(
            "The device's agent did not answer the TCP stream in time."
        ) from err
    except ForwardError:
        stream.reset()
        raise
    except (YamuxError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
        stream.reset()
        raise ForwardUnreachableError(
            "The device's agent ended the TCP stream without an answer."
        ) from err


async def _read_answer(stream: Stream, port: int) -> bytes:
    """Read the agent's answer head; return the bytes after a ``101``, raise on anything else."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _HEAD_LIMIT:
            raise ForwardUnsupportedError("The device answered the TCP stream with no HTTP head.")
        chunk = await stream.read(_HEAD_LIMIT)
        if not chunk:
            raise asyncio.IncompleteReadError(data, None)
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ForwardUnsupportedError("The device answered the TCP stream with no HTTP head.")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == _SWITCHING and headers.get("upgrade", "").lower() == TCP_UPGRADE:
        return rest
    message = await _error_message(stream, rest, headers)
    refused = headers.get(REFUSED_HEADER.lower(), "").lower()
    if refused == "port":
        raise ForwardRefusedError(message or f"The device's agent does not allow port {port}.")
    if refused == "policy":  # an agent with HTTP allow rules that predates TCP streams
        raise ForwardRefusedError(f"The device's agent does not allow TCP streams (port {port}).")
    if status == 502 and message:
        raise ForwardUnreachableError(message)
    raise ForwardUnsupportedError(
        f"The device's agent does not support TCP forwarding (it answered {status})."
    )


async def _error_message(stream: Stream, body: bytes, headers: dict[str, str]) -> str:
    """The ``error.message`` of a small JSON error body, or ``""``."""
    length = headers.get("content-length", "")
    if not length.isdigit() or int(length) > _BODY_LIMIT:
        return ""
    try:
        body += await stream.readexactly(max(0, int(length) - len(body)))
    except (YamuxError, asyncio.IncompleteReadError):
        return ""
    try:
        error = json.loads(body[: int(length)])["error"]
        return str(error["message"])[:120]
    except (ValueError, KeyError, TypeError):
        return ""
