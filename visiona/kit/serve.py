"""How ``visiona serve`` runs the application in uvicorn: one config, used by tests too.

- Request heads are bounded at the protocol level (:class:`LimitedHttpToolsProtocol`):
  over ``max_header_bytes`` or ``max_headers`` → 431 ``headers_too_large`` and the
  connection is closed, before the application sees anything. httptools itself has
  no limit (a 5 MB header is accepted), so the raw bytes of an unfinished head are
  counted too.
- uvicorn's own ``Server`` and ``Date`` headers are off: a proxied device response
  keeps its own, without duplicates; :class:`visiona.kit.http.Edge`
  adds ``Date`` where the application set none.
- ``X-Forwarded-For``/``-Proto`` are trusted only from ``forwarded_allow_ips``
  (default: nobody), so a caller cannot choose the address that rate limits count.
- :class:`NodeServer` is uvicorn's server on a socket bound beforehand; it watches the
  file descriptors while it runs (:class:`visiona.kit.fdlimit.FdWatch`) and, asked to
  stop (SIGTERM), drains before uvicorn closes its connections.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from visiona.kit.deps import DRAIN, UPGRADE_GATES
from visiona.kit.errors import HeadersTooLargeError
from visiona.kit.fdlimit import FdWatch
from visiona.kit.upgrades import mark_admitted, refusal_bytes, strip_mark
from visiona.kit.websocket import TunnelWebSocketProtocol

if TYPE_CHECKING:
    import socket
    from types import FrameType

    from visiona.kit.settings import Settings

_LOGGER = logging.getLogger("visiona.serve")

# Bytes one read may carry beyond a head (the transport reads up to 256 KiB at once):
# the raw-byte guard stops an endless header without ever cutting a legal one.
_READ_SLACK = 256 * 1024


class _HeadTooLarge(Exception):  # noqa: N818 - a control-flow signal inside the parser
    """Raised from a parser callback to stop parsing an oversized head."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads (431 above the bounds)."""

    max_head_bytes: ClassVar[int] = 32 * 1024
    max_headers: ClassVar[int] = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Set up the protocol and the head counters."""
        super().__init__(*args, **kwargs)
        self._awaiting_head = True
        self._raw_head = 0
        self._head_bytes = 0
        self._head_count = 0
        self._refused = False

    def data_received(self, data: bytes) -> None:
        """Count the bytes of an unfinished head, then parse."""
        if self._refused:
            return
        if self._awaiting_head:
            self._raw_head += len(data)
            if self._raw_head > self.max_head_bytes + _READ_SLACK:
                self._refuse()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        """A new request: count its head from zero."""
        super().on_message_begin()
        self._head_bytes = 0
        self._head_count = 0

    def on_url(self, url: bytes) -> None:
        """Count the request target."""
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count one header."""
        self._count(len(name) + len(value) + 4, 1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is complete: what follows is body (or the next request)."""
        self._awaiting_head = False
        self._raw_head = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The request is complete: what follows is the next request's head."""
        self._awaiting_head = True
        super().on_message_complete()

    def _count(self, size: int, headers: int) -> None:
        self._head_bytes += size
        self._head_count += headers
        if self._head_bytes > self.max_head_bytes or self._head_count > self.max_headers:
            self._refused = True
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error: 431 when it was our bound that stopped it."""
        if self._refused:
            self._refuse()
            return
        super().send_400_response(msg)

    def handle_websocket_upgrade(self) -> None:
        """Ask the path's upgrade gate (:mod:`visiona.kit.upgrades`) before the WebSocket
        protocol and the application: a refusal is written here and the connection
        closed; an admitted upgrade goes on marked as such."""
        headers = self.scope["headers"]
        strip_mark(headers)  # type: ignore[arg-type] # uvicorn's list of (name, value)
        gates = getattr(getattr(self.config.app, "state", None), UPGRADE_GATES.name, None)
        gate = gates.get(self.url.partition(b"?")[0].decode("latin-1")) if gates else None
        if gate is not None:
            refusal = gate()
            if refusal is not None:
                self.connections.discard(self)
                self.transport.write(refusal_bytes(refusal))
                self.transport.close()
                return
            mark_admitted(headers)  # type: ignore[arg-type] # idem
        super().handle_websocket_upgrade()

    def _refuse(self) -> None:
        self._refused = True
        err = HeadersTooLargeError()
        body = json.dumps(err.body()).encode()
        head = (
            f"HTTP/1.1 {err.status_code} Request Header Fields Too Large\r\n"
            f"date: {formatdate(usegmt=True)}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()


def limited_http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The HTTP protocol class bounded by ``settings``."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"max_head_bytes": settings.max_header_bytes, "max_headers": settings.max_headers},
    )


def trusted_proxies(settings: Settings) -> list[str]:
    """The addresses trusted to set forwarding headers (empty: none)."""
    return [part.strip() for part in settings.forwarded_allow_ips.split(",") if part.strip()]


def server_config(
    app: Any, settings: Settings, *, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    """The uvicorn configuration of ``visiona serve`` for ``app``."""
    trusted = trusted_proxies(settings)
    return uvicorn.Config(
        app,
        host=settings.host if host is None else host,
        port=settings.port if port is None else port,
        http=limited_http_protocol(settings),
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        ws=TunnelWebSocketProtocol,  # uvicorn's sans-I/O protocol + the tunnels' direct path
        ws_max_size=16 * 1024 * 1024,
        ws_ping_interval=None,  # yamux keepalive already proves the tunnel alive
        timeout_graceful_shutdown=10,
        lifespan="on",
        backlog=settings.listen_backlog,
    )


#: Seconds the drain may take beyond ``VISIONA_TUNNEL_DRAIN_WINDOW`` (its own waits are
#: bounded: the tunnels' ends, their closes, the last status batch) before the stop goes on.
DRAIN_GRACE = 40.0

#: Seconds uvicorn's own shutdown (its graceful 10 s, then the lifespan's end) may take
#: after the drain before the process stops anyway, logging what was still waited for.
STOP_BOUND = 25.0

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)

#: the young generation's threshold once serving (CPython's default is 700 allocations)
GC_YOUNG_THRESHOLD = 50_000


def settle_collector() -> None:
    """Once started: move what start-up built out of the collector's reach, and collect
    the young generation less often.

    A node holding thousands of tunnels keeps tens of thousands of long-lived objects
    (sessions, streams, timers); with CPython's defaults every few hundred allocations
    start a young collection and the older generations are walked again and again. In a
    1,000-tunnel connect storm (``bench scale``) this cut the server's CPU per tunnel by
    about a fifth (docs/operations.md, "Many tunnels on one node").
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older * 2, oldest * 2)


class NodeServer(uvicorn.Server):
    """uvicorn on a socket bound beforehand: says where it listens once it does, and
    watches the file descriptors while it runs."""

    def __init__(self, config: uvicorn.Config, listener: socket.socket, settings: Settings) -> None:
        """Serve ``config`` on ``listener`` (already bound); descriptors are looked at once
        per ``tunnel_status_interval``."""
        super().__init__(config)
        self._listener = listener
        self._drain_bound = settings.tunnel_drain_window + DRAIN_GRACE
        self._fd_watch = FdWatch(
            settings.tunnel_fd_reserve, interval=settings.tunnel_status_interval
        )

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then log the address and start watching descriptors."""
        await super().startup(sockets)
        if self.started:  # uvicorn logs no address for a socket it was given
            host, port = self._listener.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            _LOGGER.info("visiona running on http://%s:%d (Ctrl+C to stop)", shown, port)
            self._fd_watch.start()
            settle_collector()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain first (the :data:`~visiona.kit.deps.DRAIN` hooks: the tunnels close with 1001 and
        their ends are recorded while the listener still answers), then uvicorn's
        shutdown: stop accepting, finish requests, the lifespan's end."""
        await self._fd_watch.stop()
        state = getattr(self.config.app, "state", None)
        try:
            async with asyncio.timeout(self._drain_bound):
                for hook in getattr(state, DRAIN.name, ()):
                    try:
                        await hook()
                    except Exception:
                        _LOGGER.exception("drain hook failed")
        except TimeoutError:
            _LOGGER.error(  # noqa: TRY400 - the stacks below say more than this frame
                "stop: the drain did not end in %g s; stopping anyway. Still waiting: %s",
                self._drain_bound,
                waiting_tasks(),
            )
        try:
            async with asyncio.timeout(STOP_BOUND):
                await super().shutdown(sockets)
        except TimeoutError:
            _LOGGER.error(  # noqa: TRY400 - the stacks below say more than this frame
                "stop: not done %g s after the drain; stopping anyway. Still waiting: %s",
                STOP_BOUND,
                waiting_tasks(),
            )


def _innermost_frame(coro: Any) -> FrameType | None:
    """The frame of the innermost coroutine ``coro`` awaits (through ``cr_await``),
    asyncio's own frames (an ``Event.wait``, a ``wait_for``) aside."""
    frame = None
    while coro is not None:
        inner = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if inner is not None and not inner.f_code.co_filename.startswith(_ASYNCIO_DIR):
            frame = inner
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frame


def waiting_tasks(limit: int = 10) -> str:
    """What the tasks of the running loop (this one aside) are waiting in: the innermost
    frame of each, the most frequent first (for a log line)."""
    current = asyncio.current_task()
    places: dict[str, int] = {}
    for task in asyncio.all_tasks():
        if task is current:
            continue
        frame = _innermost_frame(task.get_coro())
        where = (
            f"{frame.f_code.co_qualname} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}"
            f":{frame.f_lineno})"
            if frame is not None
            else repr(task.get_coro())
        )
        places[where] = places.get(where, 0) + 1
    ranked = sorted(places.items(), key=lambda item: -item[1])[:limit]
    return "; ".join(f"{count} x {where}" for where, count in ranked) or "nothing"
