"""The streams of one session, and all a stream sees of its session.

:class:`StreamRegistry` holds the id allocation, the live streams, the accept queue
and the slots of our unacknowledged opens. It is the :class:`~visiona.yamux.stream.StreamOwner`
of every stream of the session: a stream reaches the writer, the settings it needs and
its own end through it, never through the session's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING

from .config import Config
from .writer import FrameWriter

if TYPE_CHECKING:
    from .session import Session
    from .stream import Stream


def wake_one(waiters: deque[asyncio.Future[None]]) -> None:
    """Wake the first waiter still waiting (also: in place of a cancelled one)."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


def wake_all(waiters: deque[asyncio.Future[None]]) -> None:
    """Wake every waiter."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)


class StreamRegistry:
    """Stream ids, live streams, the accept queue and open slots of one session."""

    def __init__(
        self,
        session: Session,
        loop: asyncio.AbstractEventLoop,
        writer: FrameWriter,
        config: Config,
        *,
        client: bool,
    ) -> None:
        """Start empty; ``client`` sides allocate odd ids, servers even ones."""
        # -- StreamOwner: what streams use
        self.session = session
        self.loop = loop
        self.writer = writer
        self.credit_threshold = max(1, config.max_stream_window // 2)
        self.send_frame_size = config.send_frame_size
        self.write_buffer_high = config.write_buffer_high
        self.open_timeout = config.open_timeout
        # -- the session's side
        self.parity = 1 if client else 0
        self.next_id = 1 if client else 2
        self.max_peer_id = 0
        self.streams: dict[int, Stream] = {}
        self.accept_queue: deque[Stream] = deque()
        self.accept_waiters: deque[asyncio.Future[None]] = deque()
        self.syn_inflight = 0
        self.syn_waiters: deque[asyncio.Future[None]] = deque()
        self.streams_opened = 0
        self.streams_accepted = 0
        self.streams_refused = 0

    def is_known(self, stream_id: int) -> bool:
        """Whether ``stream_id`` was opened in this session (by either side) already."""
        if stream_id & 1 == self.parity:
            return stream_id < self.next_id
        return stream_id <= self.max_peer_id

    def stream_ended(self, stream: Stream, *, queued: bool, held_slot: bool) -> None:
        """``stream`` ended: unregister it; ``queued``: still in the accept queue;
        ``held_slot``: it was an open of ours not yet acknowledged."""
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        if queued:
            with contextlib.suppress(ValueError):
                self.accept_queue.remove(stream)
        if held_slot:
            self.open_acknowledged()

    def open_acknowledged(self) -> None:
        """One of our opens was acknowledged (or ended): give back its slot."""
        self.syn_inflight -= 1
        wake_one(self.syn_waiters)

    def clear(self) -> list[Stream]:
        """The session ended: empty everything, wake every waiter; return the streams."""
        streams = list(self.streams.values())
        self.streams.clear()
        self.accept_queue.clear()
        self.syn_inflight = 0
        wake_all(self.accept_waiters)
        wake_all(self.syn_waiters)
        return streams
