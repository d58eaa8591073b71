"""The node link's life cycle: one long-lived yamux session per peer node.

A :class:`NodeLink` is opened on first use to the peer's ``/internal/v1/link``
(:func:`~visiona.cluster.linkdial.dial`: a picows WebSocket, authenticated both ways,
docs/tunnel-protocol.md §18) and kept: every exchange forwarded to that node is one
stream of its session. yamux keepalive watches the link; when it drops, the link is
dialled again with backoff while it is in use (``idle_after`` seconds since the last
exchange), and any exchange that finds no link dials at once (one dial at a time per
peer, shared by every waiting exchange).

A failure is logged once per outage (the next ones at debug level), and a refused
handshake (a different token on either side) holds further dials back for a while.
:class:`LinkPool` holds one link per peer URL; :class:`LinkAcceptor` the links peers
opened to this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING, Any

from visiona.cluster.linkdial import (
    HANDSHAKE_TIMEOUT,
    MAX_MESSAGE,
    LinkAuthError,
    LinkError,
    dial,
    link_config,
)
from visiona.yamux import Config, Session, YamuxError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from visiona.yamux import Stream

_LOGGER = logging.getLogger(__name__)
_RETRY_FIRST = 0.05
_RETRY_MAX = 5.0
_REFUSED_FIRST = 1.0
_REFUSED_MAX = 30.0

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_MESSAGE",
    "LinkAcceptor",
    "LinkAuthError",
    "LinkError",
    "LinkPool",
    "NodeLink",
    "dial",
    "link_config",
]


class NodeLink:
    """The link to one peer node: dialled on first use, kept, dialled again with backoff."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        node_id: str,
        connect_timeout: float,
        config: Config,
        idle_after: float = 300.0,
    ) -> None:
        """Prepare the link to the node at base ``url`` (nothing is dialled yet)."""
        self.url = url
        self._token = token
        self._node_id = node_id
        self._timeout = connect_timeout
        self._config = config
        self._idle_after = idle_after
        self._session: Session | None = None
        self._dialing: asyncio.Task[Session] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._last_used = 0.0
        self._failing = False
        self._refused_until = 0.0
        self._refused_delay = _REFUSED_FIRST
        self._closed = False

    def __repr__(self) -> str:
        """Name the peer and the session."""
        return f"<NodeLink {self.url} {self._session!r}>"

    @property
    def up(self) -> bool:
        """Whether an authenticated session to the peer is open now."""
        return self._session is not None and not self._session.is_closed

    @property
    def idle(self) -> bool:
        """Whether the link went unused for longer than it is kept dialled."""
        return asyncio.get_running_loop().time() - self._last_used > self._idle_after

    def discard(self) -> None:
        """Stop a link that is down (no session to close): its redialling ends."""
        self._closed = True
        for task in (self._keeper, self._dialing):
            if task is not None and not task.done():
                task.cancel()

    async def session(self) -> Session:
        """The live session to the peer, dialling it if needed (raises :class:`LinkError`)."""
        loop = asyncio.get_running_loop()
        self._last_used = loop.time()
        session = self._session
        if session is not None and not session.is_closed:
            return session
        return await self._ensure(loop)

    async def _ensure(self, loop: asyncio.AbstractEventLoop) -> Session:
        if self._closed:
            raise LinkError("the link pool is closed")
        if loop.time() < self._refused_until:
            raise LinkAuthError("the peer refused this node's link recently")
        if self._dialing is None:
            self._dialing = loop.create_task(self._dial())
        # Shielded: an exchange that gives up does not cancel the dial the others share.
        return await asyncio.shield(self._dialing)

    async def _dial(self) -> Session:
        loop = asyncio.get_running_loop()
        try:
            session = await dial(
                self.url,
                token=self._token,
                node_id=self._node_id,
                config=self._config,
                connect_timeout=self._timeout,
            )
        except LinkAuthError as err:
            self._refused_until = loop.time() + self._refused_delay
            self._refused_delay = min(self._refused_delay * 2, _REFUSED_MAX)
            self._report(
                "cluster: link to %s refused: %s (is VISIONA_INTERNAL_TOKEN the same on "
                "every node?)",
                err,
            )
            raise
        except LinkError as err:
            self._report("cluster: link to %s failed: %s", err)
            raise
        finally:
            self._dialing = None
        if self._closed:
            await session.close()
            raise LinkError("the link pool is closed")
        self._refused_delay = _REFUSED_FIRST
        if self._failing:
            _LOGGER.info("cluster: link to %s is up again", self.url)
        else:
            _LOGGER.info("cluster: link to %s is up", self.url)
        self._failing = False
        self._session = session
        self._keeper = loop.create_task(self._keep(session))
        return session

    def _report(self, message: str, err: LinkError) -> None:
        """Log a failure once per outage; the repeats at debug level."""
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        _LOGGER.log(level, message, self.url, err)

    async def _keep(self, session: Session) -> None:
        """When ``session`` ends, dial again with backoff while the link is in use."""
        await session.closed.wait()
        if self._closed:
            return
        _LOGGER.info("cluster: link to %s lost (%s)", self.url, session.close_reason)
        loop = asyncio.get_running_loop()
        delay = _RETRY_FIRST
        while not self._closed and loop.time() - self._last_used < self._idle_after:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret
            current = self._session
            if current is not session and current is not None and not current.is_closed:
                return  # an exchange dialled it meanwhile
            try:
                await self._ensure(loop)
            except LinkError:
                delay = min(delay * 2, _RETRY_MAX)
                continue
            return

    async def close(self) -> None:
        """Stop redialling and close the session (GoAway, then the WebSocket)."""
        self._closed = True
        for task in (self._keeper, self._dialing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, LinkError):
                    await task
        if self._session is not None:
            await self._session.close()


class LinkPool:
    """One :class:`NodeLink` per peer URL, made on first use."""

    def __init__(
        self,
        *,
        token: str,
        node_id: str,
        connect_timeout: float,
        config: Config,
    ) -> None:
        """Prepare an empty pool; links authenticate with ``token``."""
        self._token = token
        self._node_id = node_id
        self._timeout = connect_timeout
        self._config = config
        self._links: dict[str, NodeLink] = {}

    def link(self, url: str) -> NodeLink:
        """The link to the node at base ``url`` (created, not dialled, on first use)."""
        link = self._links.get(url)
        if link is None:
            self._prune()
            link = NodeLink(
                url,
                token=self._token,
                node_id=self._node_id,
                connect_timeout=self._timeout,
                config=self._config,
            )
            self._links[url] = link
        return link

    def _prune(self) -> None:
        """Forget the links that are down and were not used for a while (old node URLs)."""
        for url, link in list(self._links.items()):
            if link.idle and not link.up:
                del self._links[url]
                link.discard()

    def stats(self) -> dict[str, Any]:
        """How many links the pool holds and how many are up (for logs and tests)."""
        return {"links": len(self._links), "up": sum(link.up for link in self._links.values())}

    async def close(self) -> None:
        """Close every link."""
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


class LinkAcceptor:
    """The accepting side's bookkeeping: the links peers opened to this node.

    :meth:`serve` runs one authenticated session's accept loop (in the task serving
    its WebSocket), each stream in a task of its own; :meth:`close` ends them all.
    """

    def __init__(self) -> None:
        """No link yet."""
        self._sessions: set[Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused: set[str] = set()

    def refused(self, peer: str, reason: str) -> None:
        """Log a link refused from ``peer`` once (until a link from it authenticates)."""
        level = logging.DEBUG if peer in self._refused else logging.WARNING
        self._refused.add(peer)
        _LOGGER.log(
            level,
            "cluster: link from %s refused: %s (is VISIONA_INTERNAL_TOKEN the same on every node?)",
            peer,
            reason,
        )

    async def serve(
        self, session: Session, peer: str, handler: Callable[[Stream], Coroutine[Any, Any, None]]
    ) -> None:
        """Accept ``session``'s streams and run ``handler`` on each until the link ends."""
        self._refused.discard(peer)
        self._sessions.add(session)
        _LOGGER.info("cluster: link from %s is up", peer)
        try:
            while True:
                try:
                    stream = await session.accept_stream()
                except YamuxError:
                    break
                task = asyncio.get_running_loop().create_task(handler(stream))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await session.wait_closed()
        finally:
            self._sessions.discard(session)
            _LOGGER.info("cluster: link from %s ended (%s)", peer, session.close_reason)

    @property
    def links(self) -> int:
        """How many peers' links are open now."""
        return len(self._sessions)

    async def close(self) -> None:
        """Close every accepted link; cancel the exchanges still running."""
        await asyncio.gather(*(s.close() for s in list(self._sessions)), return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
