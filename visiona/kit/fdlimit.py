"""File descriptors: the soft limit raised at start, the count in use, accept failures logged.

Every agent tunnel holds one socket. Under the common default soft limit of 1,024 about
970 agents filled a node, after which every new connection (the API and ``/healthz``
included) was reset with nothing in the log. So ``visiona serve`` raises the soft limit
to the hard one at start (:func:`raise_nofile_limit`, logged), the tunnel hub refuses new
tunnels (503) while ``VISIONA_TUNNEL_FD_RESERVE`` descriptors are left for everything
else, and :class:`FdWatch` logs at most once a minute while the process is short of
descriptors (accept failures themselves are silent under uvloop: libuv accepts and
closes the connection to keep its loop going).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import time
from collections.abc import Callable

_LOGGER = logging.getLogger(__name__)
#: Used when the hard limit is "unlimited" (setrlimit refuses RLIM_INFINITY above nr_open).
_FALLBACK_CEILING = 1024 * 1024
#: Seconds between two "short of file descriptors" lines.
LOG_EVERY = 60.0


def nofile_limits() -> tuple[int, int]:
    """The process's (soft, hard) limits on open file descriptors (``-1``: unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return int(soft), int(hard)


def _ceiling(hard: int) -> int:
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as nr_open:
            return int(nr_open.read().strip())
    except (OSError, ValueError):
        return _FALLBACK_CEILING


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit; return (before, after).

    A refusal (some containers) leaves the limit as it was; the caller logs the figure.
    """
    soft, hard = nofile_limits()
    target = _ceiling(hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as err:
        _LOGGER.warning("file descriptors: soft limit %s not raised: %s", soft, err)
        return soft, soft
    return soft, target


def open_fds() -> int:
    """File descriptors open in this process (``-1`` where /proc is not available; the
    soft limit when listing needs a descriptor and none is left)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as err:
        if err.errno in {errno.EMFILE, errno.ENFILE}:
            return nofile_limits()[0]
        return -1


class FdWatch:
    """Log, at most once per :data:`LOG_EVERY` seconds, while descriptors run short.

    "Short" is fewer than ``reserve // 4`` descriptors left under the soft limit — the
    point at which accepts start failing. Also rate-limits asyncio's own
    ``socket.accept() out of system resource`` reports (one per failed accept) to the
    same one line a minute, through :meth:`install_exception_handler`.
    """

    def __init__(self, reserve: int, *, interval: float = 5.0) -> None:
        """Watch every ``interval`` seconds once :meth:`start` is called."""
        self._reserve = reserve
        self._interval = interval
        self._last_logged = -LOG_EVERY
        self._suppressed = 0
        self._task: asyncio.Task[None] | None = None

    def short(self) -> tuple[int, int] | None:
        """(open, soft limit) when fewer than a quarter of the reserve is left, else None."""
        soft, _ = nofile_limits()
        if soft == resource.RLIM_INFINITY:
            return None
        used = open_fds()
        if used < 0 or soft - used > self._reserve // 4:
            return None
        return used, soft

    def report(self, used: int, soft: int, what: str) -> bool:
        """Log one line unless one was logged less than a minute ago; True when logged."""
        now = time.monotonic()
        if now - self._last_logged < LOG_EVERY:
            self._suppressed += 1
            return False
        more = f" ({self._suppressed} more since the last line)" if self._suppressed else ""
        _LOGGER.warning(
            "file descriptors: %s of %s in use; %s%s; raise LimitNOFILE "
            "or VISIONA_TUNNEL_FD_RESERVE",
            used,
            soft,
            what,
            more,
        )
        self._last_logged = now
        self._suppressed = 0
        return True

    def check(self) -> None:
        """One look: report when short."""
        short = self.short()
        if short is not None:
            self.report(*short, "new connections are being refused")

    def install_exception_handler(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fold the loop's per-accept "out of system resource" reports into :meth:`report`."""
        previous: Callable[..., object] | None = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
            if "accept" in str(context.get("message", "")) and isinstance(
                context.get("exception"), OSError
            ):
                _, soft = nofile_limits()
                self.report(open_fds(), soft, "accepting a connection failed")
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    def start(self) -> None:
        """Watch in the running loop until :meth:`stop`."""
        self.install_exception_handler(asyncio.get_running_loop())
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check()

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
