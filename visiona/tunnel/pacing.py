"""Accept pacing: a token bucket in front of the tunnel upgrades.

A connect storm (every agent back at once after a restart or a network blip) used to
be taken whole: 10,000 upgrades at once, each paying for its token check and session
set-up, the event loop too busy to finish the handshakes the agents were timing out.
The node now lets in ``VISIONA_TUNNEL_ACCEPT_RATE`` upgrades per second (a burst of
one second's worth) and answers the others 503 ``tunnel_unavailable`` (reason
``paced``) before the handshake and before any database work, with a ``Retry-After``
that books each refused agent its own later slot at the same rate, so the crowd comes
back spread out instead of all in the next second (the agent adds its own jitter).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: The latest slot a refused upgrade is told to come back at (seconds ahead).
MAX_RETRY_AFTER = 120.0


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Start full."""
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()
        self._next_slot = 0.0

    def take(self) -> int:
        """0 when a token was taken; else the whole seconds after which to come back.

        Each refusal books the next free slot at ``rate`` per second (bounded to
        :data:`MAX_RETRY_AFTER`), so the refused do not all return at once.
        """
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0
        due = now + (1 - self._tokens) / self._rate
        slot = min(max(self._next_slot, due), now + MAX_RETRY_AFTER)
        self._next_slot = slot + 1 / self._rate
        return max(1, math.ceil(slot - now))

    def book(self) -> int:
        """The whole seconds after which to come back, booking the next free slot at
        ``rate`` without taking a token (a refusal for another cause, spread the same way)."""
        now = self._clock()
        slot = min(max(self._next_slot, now + 1 / self._rate), now + MAX_RETRY_AFTER)
        self._next_slot = slot + 1 / self._rate
        return max(1, math.ceil(slot - now))
