"""The stream writer: one model file sent through a device's tunnel to its agent.

One yamux stream carries one HTTP/1.1 exchange, ``PUT /visiona/models/{model_id}``
with ``Content-Length``, ``X-Visiona-Sha256`` and ``X-Visiona-Chip``; the agent
handles that reserved path itself (docs/tunnel-protocol.md). The body is read from
the object store range by range and written with back-pressure (``drain`` after each
piece), so the file is never held whole. The agent's answer is parsed with h11.
Every failure is a :class:`TransferFailedError` whose message goes into the record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import h11

from visiona.kit.errors import AppError
from visiona.wire import CHIP_HEADER, MODELS_PATH, SHA256_HEADER
from visiona.yamux import YamuxError

if TYPE_CHECKING:
    import uuid

    from visiona.yamux import Session, Stream

_LOGGER = logging.getLogger(__name__)
_READ_SIZE = 64 * 1024
_ANSWER_LIMIT = 64 * 1024


class TransferFailedError(Exception):
    """The transfer did not end with the agent's 200; the message says why (for the record)."""


def request_head(model_id: uuid.UUID, *, size: int, sha256: str, chip: str) -> bytes:
    """The HTTP/1.1 request head of a model transfer."""
    lines = [
        f"PUT {MODELS_PATH}{model_id} HTTP/1.1",
        "Host: device",
        "Content-Type: application/octet-stream",
        f"Content-Length: {size}",
        f"{SHA256_HEADER}: {sha256}",
        f"{CHIP_HEADER}: {chip}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def send_model(
    session: Session,
    chunks: AsyncIterator[bytes],
    *,
    model_id: uuid.UUID,
    size: int,
    sha256: str,
    chip: str,
    answer_timeout: float,
) -> dict[str, Any]:
    """Send ``size`` bytes from ``chunks`` as model ``model_id``; return the agent's JSON answer.

    Raises :class:`TransferFailedError` when the tunnel drops, the stored file does not
    have the recorded size, the agent does not answer within ``answer_timeout`` seconds
    after the body was sent, or it answers anything but 200.
    """
    try:
        stream = await session.open_stream()
    except YamuxError as err:
        raise TransferFailedError("the tunnel closed before the transfer started") from err
    complete = False
    try:
        stream.write(request_head(model_id, size=size, sha256=sha256, chip=chip))
        await _copy_body(stream, chunks, size)
        stream.write_eof()
        async with asyncio.timeout(answer_timeout):
            status, body = await _read_answer(stream)
        complete = True
    except YamuxError as err:
        raise TransferFailedError(f"the tunnel dropped during the transfer ({err})") from err
    except TimeoutError as err:
        raise TransferFailedError(
            f"the agent did not answer within {answer_timeout:g}s after the file was sent"
        ) from err
    finally:
        if complete:
            stream.close()
        else:
            stream.reset()
    if status != 200:
        raise TransferFailedError(f"the agent answered {status}: {_reason(body)}")
    return body


async def _copy_body(stream: Stream, chunks: AsyncIterator[bytes], size: int) -> None:
    sent = 0
    try:
        async for chunk in chunks:
            sent += len(chunk)
            if sent > size:
                raise TransferFailedError("the stored file is larger than its record says")
            stream.write(chunk)
            await stream.drain()
    except AppError as err:  # the object store failed while reading
        raise TransferFailedError(f"the model file could not be read: {err.message}") from err
    if sent != size:
        raise TransferFailedError("the stored file is shorter than its record says")


async def _read_answer(stream: Stream) -> tuple[int, dict[str, Any]]:
    """Parse the agent's response with h11: its status and JSON body (``{}`` if none)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_ANSWER_LIMIT)
    conn.send(h11.Request(method="PUT", target="/", headers=[("Host", "device")]))
    conn.send(h11.EndOfMessage())
    status = 0
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.read(_READ_SIZE))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _ANSWER_LIMIT:
                    raise TransferFailedError("the agent's answer is too large")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    except h11.RemoteProtocolError as err:
        if status == 0:
            raise TransferFailedError("the agent closed the stream without an answer") from err
        raise TransferFailedError("the agent sent an invalid answer") from err
    if status == 0:
        raise TransferFailedError("the agent closed the stream without an answer")
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
    return status, parsed if isinstance(parsed, dict) else {}


def _reason(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return f"{error.get('code', 'error')}: {error.get('message', '')}".strip()
    return "no reason given"
