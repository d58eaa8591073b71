"""Pings of one session: ids, the waiters of explicit pings, and the keepalive timer.

The keepalive is one loop timer, never a task: it fires every ``interval`` after the
last answer, sends a Ping and re-arms itself as the timeout; the answer (or the
timeout) re-arms it as the interval again. An idle session therefore costs one timer
callback and two frames per interval, nothing in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: ``on_miss(consecutive_misses)`` -> True to keep pinging, False to stop.
MissHandler = Callable[[int], bool]


class Pings:
    """Ping bookkeeping for one session; ``send(ping_id)`` queues a Ping request frame."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[int], None]) -> None:
        """Send pings with ``send``; the keepalive starts with :meth:`start_keepalive`."""
        self._loop = loop
        self._send = send
        self._next_id = 0
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._interval = 0.0
        self._timeout = 0.0
        self._on_miss: MissHandler | None = None
        self._on_answer: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ka_id: int | None = None  # the keepalive ping waiting for its answer
        self._misses = 0

    @property
    def keepalive_armed(self) -> bool:
        """True while the keepalive timer is set."""
        return self._timer is not None

    def _take_id(self) -> int:
        ping_id = self._next_id
        self._next_id = (ping_id + 1) & 0xFFFFFFFF
        return ping_id

    def ping(self) -> tuple[int, asyncio.Future[None]]:
        """Send a ping; return its id and a future resolved by the answer (or the end)."""
        ping_id = self._take_id()
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters[ping_id] = waiter
        self._send(ping_id)
        return ping_id, waiter

    def discard(self, ping_id: int) -> None:
        """Forget an explicit ping (answered, timed out or cancelled)."""
        self._waiters.pop(ping_id, None)

    def answered(self, ping_id: int) -> None:
        """The peer answered ``ping_id``."""
        waiter = self._waiters.pop(ping_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if ping_id == self._ka_id:
            self._ka_id = None
            self._misses = 0
            if self._on_answer is not None:
                self._on_answer()
            self._arm(self._interval, self._keepalive_send)

    def start_keepalive(
        self,
        interval: float,
        timeout: float,
        on_miss: MissHandler,
        on_answer: Callable[[], None] | None = None,
    ) -> None:
        """Ping every ``interval`` after the last answer; ``on_miss`` after each ``timeout``."""
        self._interval, self._timeout = interval, timeout
        self._on_miss, self._on_answer = on_miss, on_answer
        self._arm(interval, self._keepalive_send)

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, callback)

    def _keepalive_send(self) -> None:
        ping_id = self._take_id()
        self._ka_id = ping_id
        self._arm(self._timeout, self._keepalive_expired)
        self._send(ping_id)

    def _keepalive_expired(self) -> None:
        self._timer = None
        self._ka_id = None
        self._misses += 1
        assert self._on_miss is not None  # noqa: S101 - set with the timer
        if self._on_miss(self._misses) and self._timer is None:
            self._arm(self._interval, self._keepalive_send)

    def close(self) -> None:
        """Stop the keepalive and release every waiter (the session ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ka_id = None
        waiters = list(self._waiters.values())
        self._waiters.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
