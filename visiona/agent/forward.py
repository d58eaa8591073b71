"""The forwarder: each stream the cloud opens is copied to and from a local TCP service."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from visiona.yamux import Stream, YamuxError

_LOGGER = logging.getLogger(__name__)
_CHUNK = 256 * 1024


async def _to_local(stream: Stream, writer: asyncio.StreamWriter) -> None:
    while chunk := await stream.read(_CHUNK * 4):
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()  # half-close: the local service sees the end of the request


async def _to_cloud(reader: asyncio.StreamReader, stream: Stream) -> None:
    while chunk := await reader.read(_CHUNK):
        stream.write(chunk)
        await stream.drain()
    stream.write_eof()


async def forward_stream(stream: Stream, host: str, port: int) -> None:
    """Dial ``host:port`` and copy both ways with half-close; reset the stream on failure."""
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=_CHUNK * 4)
    except OSError as err:
        _LOGGER.warning("agent: cannot reach %s:%s: %s", host, port, err.strerror or err)
        stream.reset()
        return
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_to_local(stream, writer))
            group.create_task(_to_cloud(reader, stream))
    except* (OSError, YamuxError) as errors:
        _LOGGER.debug("agent: stream %s ended early: %r", stream.stream_id, errors.exceptions[0])
        stream.reset()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        stream.close()
