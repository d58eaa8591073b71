"""A transport over a message channel whose send never blocks (a WebSocket protocol).

:class:`~visiona.yamux.FeedTransport` runs a writer task because its owner's ``send``
may be a coroutine. When the owner's send is a plain call that only queues bytes on a
socket (picows' ``WSTransport.send``, a uvicorn protocol's frame write), that task
is pure overhead: every outgoing message costs an event set, a task step and an
await. :class:`MessageTransport` calls ``send`` at once from :meth:`write`, so the
session's coalesced flush leaves as one message in the same callback, and an idle
session has no task at all; received messages are fed with :meth:`feed_data` from
the owner's own receive callback, also without a task.

Back-pressure is the owner's to report: it calls :meth:`pause_writing` when its
socket buffer passes the high-water mark and :meth:`resume_writing` when it drained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .frames import Buffer
from .transport import ByteTransport

_LOGGER = logging.getLogger(__name__)

#: ``send(message)``: queue one binary message; must not block nor re-enter the session.
SyncSend = Callable[[Buffer], None]


class MessageTransport(ByteTransport):
    """Carry a session's bytes as messages of at most ``max_message`` bytes, sent at once.

    ``send`` is called with each message in order (``bytes``, ``bytearray`` or a
    ``memoryview``; the transport never mutates a buffer after handing it over, and the
    session never mutates one it wrote); ``close`` (optional) is called once, after
    the last message, when the session closes the transport, and the owner reports
    the end with :meth:`connection_lost`; ``abort`` (optional) drops the channel at
    once. An exception from ``send`` ends the transport as a lost connection.
    """

    def __init__(
        self,
        send: SyncSend,
        close: Callable[[], None] | None = None,
        *,
        abort: Callable[[], None] | None = None,
        max_message: int = 1024 * 1024,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Bind the owner's callables; nothing is sent before a session attaches."""
        super().__init__()
        if max_message <= 0:
            raise ValueError("max_message must be positive")
        self._send = send
        self._close_cb = close
        self._abort_cb = abort
        self._max_message = max_message
        self._extra = dict(extra or {})
        self._closing = False
        self._lost = False

    # -- the owner's side -------------------------------------------------------------
    def feed_data(self, data: Buffer) -> None:
        """Hand one received message (or any part of the byte stream) to the session."""
        if not self._lost and data:
            self._deliver(data if type(data) is bytes else bytes(data))

    def feed_eof(self) -> None:
        """The peer will send nothing more (a close frame arrived)."""
        if not self._lost:
            self._deliver_eof()

    def connection_lost(self, exc: BaseException | None = None) -> None:
        """The channel is gone; the session ends (idempotent)."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._deliver_lost(exc)

    def pause_writing(self) -> None:
        """The owner's buffer is over its high-water mark: the session holds its data."""
        if not self._lost:
            self._set_write_paused(paused=True)

    def resume_writing(self) -> None:
        """The owner's buffer drained: the session may send again."""
        if not self._lost:
            self._set_write_paused(paused=False)

    # -- the session's side -----------------------------------------------------------
    def _start(self) -> None:
        self._closed_future()

    def write(self, data: Buffer) -> None:
        """Send ``data`` now, as one message or, above ``max_message``, as several."""
        if self._closing or not data:
            return
        size = len(data)
        limit = self._max_message
        try:
            if size <= limit:
                self._send(data)
                return
            view = data if isinstance(data, memoryview) else memoryview(data)
            for start in range(0, size, limit):
                self._send(view[start : start + limit])
        except Exception as err:  # noqa: BLE001 - a failed send is a lost channel, reported to the session
            _LOGGER.debug("message transport: send failed: %r", err)
            self.connection_lost(err)

    def writelines(self, chunks: list[Buffer]) -> None:
        """Send ``chunks`` as few messages as ``max_message`` allows (one join per message)."""
        limit = self._max_message
        batch: list[Buffer] = []
        size = 0
        for chunk in chunks:
            length = len(chunk)
            if batch and size + length > limit:
                self.write(batch[0] if len(batch) == 1 else b"".join(batch))
                batch, size = [], 0
            if length > limit:
                self.write(chunk)
                continue
            batch.append(chunk)
            size += length
        if batch:
            self.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def close(self) -> None:
        """Stop sending and let the owner close the channel (what was written has left)."""
        if self._closing:
            return
        self._closing = True
        if self._close_cb is None:
            self.connection_lost(None)
            return
        try:
            self._close_cb()
        except Exception as err:  # noqa: BLE001 - closing a broken channel may fail; it is lost either way
            _LOGGER.debug("message transport: close failed: %r", err)
            self.connection_lost(err)

    def abort(self) -> None:
        """Drop the channel at once: the session learns of it as a lost connection."""
        if self._lost:
            return
        self._closing = True
        callback = self._abort_cb or self._close_cb
        if callback is not None:
            try:
                callback()
            except Exception as err:  # noqa: BLE001 - the channel is being dropped anyway
                _LOGGER.debug("message transport: abort failed: %r", err)
        self.connection_lost(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return a detail given by the owner (``peername``...)."""
        return self._extra.get(name, default)
