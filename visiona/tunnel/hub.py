"""The per-node hub: device → live tunnel, keepalive, batched status writes, metrics.

One hub per application (built in the lifespan). It holds at most one tunnel per
device — the newest wins, the older one is closed with GoAway and WebSocket close
code 4409 ``superseded`` — and closes a tunnel whose credentials were revoked (4401
``revoked``). Status: a tunnel coming up is ``online`` + ``last_connected_at``, an
unanswered keepalive ``reconnecting``, a tunnel that ends ``offline``; these changes
and their audit events (``tunnel.connected``; ``tunnel.disconnected``,
``tunnel.superseded``, ``tunnel.closed_revoked``) are queued and written in batches
of at most 0.25 s, one transaction each, retried until written
(visiona/tunnel/statuswriter.py). ``last_seen_at`` is refreshed from answered pings
and traffic in one UPDATE per ``tunnel_status_interval`` for all devices of the node.
Every write carries the tunnel's epoch, so an old tunnel's late write never wins.

In a cluster each tunnel holds a lease in the registry (visiona/cluster/registry.py).
One task per node, not per tunnel, renews them all every ``tunnel_ping_interval`` and
re-checks every tunnel's session token (:meth:`TunnelHub.lease_round`, in chunks of
:data:`LEASE_CHUNK`: a Redis script call and a SQL statement each): a lease another
node took closes the tunnel here, a revocation whose pub/sub message was missed closes
it too.

Upgrades pass a gate first (:meth:`TunnelHub.open_upgrade`): 503 + ``Retry-After``
while the node drains, while its status writes are behind, or when the tunnels would
eat the file descriptors kept for the API. On SIGTERM :meth:`TunnelHub.drain` closes
the tunnels (1001 with a reconnect hint) spread over ``tunnel_drain_window``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec

from visiona.audit import service as audit
from visiona.audit.service import SYSTEM, Actor
from visiona.kit.clock import utcnow
from visiona.kit.coalesce import Coalescer
from visiona.kit.fdlimit import nofile_limits
from visiona.kit.websocket import UpgradeAbandonedError
from visiona.tokens import service as tokens
from visiona.tokens.batch import SessionChecks
from visiona.tunnel import conflict, repository
from visiona.tunnel.errors import DeviceBusyError, TunnelUnavailableError
from visiona.tunnel.forwards import Forwards
from visiona.tunnel.link import TunnelLink
from visiona.tunnel.pacing import TokenBucket
from visiona.tunnel.statuswriter import StatusChange, StatusWriter
from visiona.wire import (
    CLOSE_GOING_AWAY,
    CLOSE_KEEPALIVE,
    CLOSE_REVOKED,
    CLOSE_SUPERSEDED,
    SHUTDOWN_REASON,
    going_away_reason,
)
from visiona.yamux import Config

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncConnection
    from starlette.websockets import WebSocket

    from visiona.cluster.registry import Lease, TunnelRegistry
    from visiona.kit.database import Database
    from visiona.kit.metrics import Metrics
    from visiona.kit.settings import Settings
    from visiona.tokens.service import DeviceIdentity

_LOGGER = logging.getLogger(__name__)
_P = ParamSpec("_P")
#: The ``reason`` of a ``tunnel.disconnected`` written at start-up for a tunnel the
#: previous run of this node left marked connected (a crash).
RESTART_REASON = "the server restarted"
#: Why admission refuses a proxied request, and the ``Retry-After`` it answers with.
ADMISSION_REASONS = {"inflight": 1, "deploying": 5, "busy": 5}
#: ``Retry-After`` of a tunnel refused because the node's descriptors are spoken for.
CAPACITY_RETRY_AFTER = 30
#: Status changes waiting for the database above which new tunnels are refused (paced).
MAX_STATUS_BACKLOG = 2000
#: The longest a tunnel's status change waits in memory before its batch is written.
STATUS_BATCH_INTERVAL = 0.25
#: Tunnels per step of a lease round (one Redis script call, one SQL statement).
LEASE_CHUNK = 500
#: The most lease releases one script call carries (tunnels ending at once).
RELEASE_BATCH = 500
_ADMISSION_MESSAGES = {
    "inflight": "The device has too many requests in flight; retry later.",
    "deploying": "A deployment to the device is in progress; retry after it.",
    "busy": "The device's agent reports its local service busy; retry later.",
}


class TunnelHub:
    """Live tunnels of this node and the writer of their devices' remote status."""

    def __init__(
        self, db: Database, settings: Settings, registry: TunnelRegistry | None = None
    ) -> None:
        """Prepare an empty hub; :meth:`start` resets stale statuses and starts batching.

        With a ``registry`` (a cluster) each tunnel holds a lease in Redis, all of them
        renewed by one node-wide round per keepalive interval (:meth:`lease_round`);
        without one the node behaves as the only one.
        """
        self._db = db
        #: the session checks of the upgrades (a storm's share statements)
        self.session_checks = SessionChecks(db)
        self.registry = registry
        self._leases: dict[uuid.UUID, Lease] = {}
        #: the lease releases of tunnels ending at once share script calls (a drain, a
        #: network blip: thousands at the same moment)
        self._releases: Coalescer[tuple[uuid.UUID, str], bool] = Coalescer(
            self._release_batch, default=True, max_batch=RELEASE_BATCH
        )
        self._settings = settings
        self._config = Config(
            enable_keepalive=False,  # the hub pings itself to tell reconnecting from gone
            refuse_streams=True,  # agents open no streams: a SYN is reset, nothing is kept
            keepalive_timeout=settings.tunnel_ping_timeout,
            max_stream_window=settings.tunnel_stream_window,
        )
        self._tunnels: dict[uuid.UUID, TunnelLink] = {}
        self.conflicts = conflict.ConflictDetector()
        self._seen: set[uuid.UUID] = set()
        self._status = StatusWriter(db, min(STATUS_BATCH_INTERVAL, settings.tunnel_status_interval))
        self._last_epoch = 0
        self._flush_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[Any]] = set()
        self._chores: set[asyncio.Task[None]] = set()
        #: set by :meth:`drain`: new upgrades are refused (503 ``draining``)
        self.draining = False
        self._bytes_to_devices = 0
        self._bytes_from_devices = 0
        self._streams_refused = 0
        self._max_inflight = settings.proxy_max_inflight_per_device
        self._refuse_busy = settings.proxy_during_deploy == "refuse"
        #: proxied requests refused by admission, per reason (``/metrics``)
        self.refused: dict[str, int] = dict.fromkeys(ADMISSION_REASONS, 0)
        #: tunnel upgrades by answer (``/metrics``): ``101``, ``abandoned`` (the agent went
        #: away before its upgrade completed), or the HTTP status of a refusal
        self.upgrades: dict[str, int] = {"101": 0, "abandoned": 0}
        #: upgrades between the gate and their tunnel's registration (or their refusal)
        self._pending = 0
        self.capacity = _tunnel_capacity(settings.tunnel_fd_reserve)
        #: the TCP forwards open through this node's tunnels (visiona/tunnel/tcp_endpoints.py)
        self.forwards = Forwards(settings)
        rate = settings.tunnel_accept_rate
        self._bucket = TokenBucket(rate, max(1.0, rate)) if rate > 0 else None

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        """Mark offline the devices a previous run of this node left connected; start batching.

        There is one node today, so every device still marked connected was held by a
        previous run (a crash leaves them ``online``). With several nodes this becomes
        "the devices of this node's registry entry"; meanwhile another node's devices
        would be marked ``online`` again by its next batch.
        """
        async with self._db.transaction() as conn:
            if self.registry is None:
                reset = await repository.mark_all_offline(conn)
            else:
                reset = await self._reset_own(conn)
            for device_id, owner_id, org_id in reset:  # their tunnels ended with that run
                await audit.record(
                    conn,
                    "tunnel.disconnected",
                    actor=SYSTEM,
                    owner_id=owner_id,
                    org_id=org_id,
                    target_id=device_id,
                    device_id=device_id,
                    detail={"reason": RESTART_REASON},
                )
        if reset:
            _LOGGER.info("tunnel: marked %s device(s) offline left from a previous run", len(reset))
        self._status.start()
        loop = asyncio.get_running_loop()
        self._flush_task = loop.create_task(self._flush_loop())
        if self.registry is not None:  # one task for the whole node's leases
            self._lease_task = loop.create_task(self._lease_loop())

    async def _reset_own(
        self, conn: AsyncConnection
    ) -> list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]:
        """Cluster start-up: offline only devices whose lease is gone or names this node."""
        registry = self.registry
        assert registry is not None  # noqa: S101 - only called with a registry
        connected = await repository.connected_device_ids(conn)
        owners = await registry.owners(connected)
        stale = [d for d, o in owners.items() if o is None or o.node_id == registry.node_id]
        return await repository.mark_offline(conn, stale)

    async def drain(self) -> None:
        """The node stops: refuse new upgrades, close every tunnel, wait for their records.

        Tunnels are closed in slices spread over ``tunnel_drain_window`` (GoAway, then
        WebSocket close 1001 ``server shutting down; reconnect in X s`` with X drawn
        from the same window), so that agents do not all come back in the same second.
        Each end is recorded as ``tunnel.disconnected`` by the system, reason ``server
        shutting down``, and its device marked offline before this returns (bounded).
        """
        self.draining = True
        window = self._settings.tunnel_drain_window
        links = list(self._tunnels.values())
        if not links:
            return
        _LOGGER.info("tunnel: draining %s tunnel(s) over %.1f s", len(links), window)
        random.shuffle(links)
        loop = asyncio.get_running_loop()
        start = loop.time()
        slices = max(1, min(len(links), math.ceil(window / 0.05)))
        per_slice = math.ceil(len(links) / slices)
        for index in range(0, len(links), per_slice):
            due = start + window * index / len(links)
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            for link in links[index : index + per_slice]:
                self._going_away(link, random.uniform(0, window))  # noqa: S311 - jitter
        serving = list(self._serving)
        if serving:
            await asyncio.wait(serving, timeout=window + 10)
        if self._chores:
            await asyncio.wait(list(self._chores), timeout=10)
        await self._status.close()  # every end recorded before uvicorn stops
        _LOGGER.info("tunnel: drained")

    def _going_away(self, link: TunnelLink, hint: float) -> None:
        """Close ``link`` with 1001 and a reconnect hint; recorded as the node's shutdown."""
        if link.closed_by_server is None:
            link.closed_by_server = (CLOSE_GOING_AWAY, SHUTDOWN_REASON)
        self._background(link.close(CLOSE_GOING_AWAY, going_away_reason(hint)))

    async def close(self) -> None:
        """Stop renewing leases, close every tunnel (1001), write the last batch, stop
        batching."""
        self.draining = True
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
            self._lease_task = None
        links = list(self._tunnels.values())
        for link in links:
            self._going_away(link, random.uniform(0, self._settings.tunnel_drain_window))  # noqa: S311 - jitter
        if self._serving:
            await asyncio.wait(list(self._serving), timeout=5)
        if self._chores:
            await asyncio.wait(list(self._chores), timeout=5)
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
        await self._status.close()

    # -- queries ------------------------------------------------------------------
    def get(self, device_id: uuid.UUID) -> TunnelLink | None:
        """The device's live tunnel on this node, if any."""
        link = self._tunnels.get(device_id)
        if link is None or link.session.is_closed:
            return None
        return link

    def count(self) -> int:
        """Live tunnels on this node."""
        return len(self._tunnels)

    def open_streams(self) -> int:
        """Streams open over all live tunnels."""
        return sum(link.session.num_streams for link in self._tunnels.values())

    def bytes_to_devices(self) -> int:
        """Bytes sent to agents (yamux headers included), since start."""
        live = sum(link.session.bytes_sent for link in self._tunnels.values())
        return self._bytes_to_devices + live

    def bytes_from_devices(self) -> int:
        """Bytes received from agents (yamux headers included), since start."""
        live = sum(link.session.bytes_received for link in self._tunnels.values())
        return self._bytes_from_devices + live

    def streams_refused(self) -> int:
        """Streams agents tried to open (each reset at once), since start."""
        live = sum(link.session.stats().streams_refused for link in self._tunnels.values())
        return self._streams_refused + live

    def register_metrics(self, metrics: Metrics) -> None:
        """Expose the hub's gauges on ``/metrics``."""
        metrics.gauge(
            "visiona_tunnels_connected", "Agent tunnels connected to this node.", self.count
        )
        metrics.gauge(
            "visiona_tunnel_streams_open",
            "Streams open over this node's tunnels.",
            self.open_streams,
        )
        metrics.gauge(
            "visiona_tunnel_bytes_to_devices",
            "Bytes relayed to agents by this node since start.",
            self.bytes_to_devices,
        )
        metrics.gauge(
            "visiona_tunnel_bytes_from_devices",
            "Bytes relayed from agents by this node since start.",
            self.bytes_from_devices,
        )
        metrics.labelled_counter(
            "visiona_proxy_refused",
            "Proxied requests refused by admission (429 device_busy) on this node, by reason.",
            "reason",
            lambda: self.refused,
        )
        metrics.labelled_counter(
            "visiona_tunnel_upgrades",
            "Agent tunnel upgrades on this node by answer: 101, an HTTP status (401, 503...) "
            "or abandoned (the agent went away before its upgrade completed).",
            "answer",
            lambda: self.upgrades,
        )
        metrics.counter(
            "visiona_tunnel_streams_refused",
            "Streams agents tried to open on this node (agents open none; each is reset).",
            self.streams_refused,
        )
        self.forwards.register_metrics(metrics)

    # -- admission ------------------------------------------------------------------
    def admit(self, link: TunnelLink) -> Callable[[], None]:
        """Take one in-flight slot of ``link`` for a proxied request, or refuse it.

        Refused (:class:`DeviceBusyError`, 429) when ``proxy_max_inflight_per_device``
        requests are already in flight, or, with ``proxy_during_deploy=refuse``, while
        a deployment runs through the tunnel or the agent reported its service busy —
        all read from memory, no tunnel round trip. Returns the release callback (call
        it once, when the exchange ends; extra calls do nothing).
        """
        reason = None
        if self._refuse_busy and link.deployments:
            reason = "deploying"
        elif self._refuse_busy and link.busy:
            reason = "busy"
        elif link.inflight >= self._max_inflight:
            reason = "inflight"
        if reason is not None:
            self.refused[reason] += 1
            raise DeviceBusyError(reason, ADMISSION_REASONS[reason], _ADMISSION_MESSAGES[reason])
        link.inflight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                link.inflight -= 1

        return release

    def report_busy(self, device_id: uuid.UUID, busy: bool) -> None:
        """The agent reported its local service ``busy`` (or idle): remember it on the tunnel."""
        link = self._tunnels.get(device_id)
        if link is not None:
            link.busy = busy

    # -- upgrades -----------------------------------------------------------------
    def refuse_upgrade(self) -> TunnelUnavailableError | None:
        """The gate of the tunnel upgrades: the refusal (counted), or None — and then one
        accept token is taken.

        Decided from memory, before the token check (no database round trip for a
        refusal), and asked by ``visiona serve``'s HTTP protocol before the WebSocket
        protocol and the application run (visiona/kit/upgrades.py), so that a refusal
        costs the least: while the node drains; while more than
        :data:`MAX_STATUS_BACKLOG` status changes wait for the database; when tunnels
        plus upgrades in progress would take more file descriptors than ``capacity``
        (the soft limit less ``tunnel_fd_reserve``); while ``tunnel_upgrade_concurrency``
        upgrades are already being checked (a slow database slows the storm down instead
        of queueing it); beyond ``tunnel_accept_rate`` upgrades per second (a token
        bucket, visiona/tunnel/pacing.py).
        """
        refusal: TunnelUnavailableError | None = None
        if self.draining:
            refusal = TunnelUnavailableError(
                "draining",
                max(1, math.ceil(self._settings.tunnel_drain_window)),
                "The node is stopping; retry later (or on another node).",
            )
        elif self._status.backlog > MAX_STATUS_BACKLOG:
            refusal = TunnelUnavailableError(
                "paced", 2, "The node is catching up with its database; retry shortly."
            )
        elif self._pending + len(self._tunnels) >= self.capacity:
            refusal = TunnelUnavailableError(
                "capacity",
                CAPACITY_RETRY_AFTER,
                "The node holds as many tunnels as its file descriptors allow; retry later "
                "(or on another node).",
            )
        elif self._pending >= self._settings.tunnel_upgrade_concurrency:
            refusal = TunnelUnavailableError(
                "paced",
                self._bucket.book() if self._bucket is not None else 1,
                "The node is checking as many upgrades as it can; retry shortly.",
            )
        elif self._bucket is not None and (retry_after := self._bucket.take()):
            refusal = TunnelUnavailableError(
                "paced", retry_after, "The node takes new tunnels at a paced rate; retry later."
            )
        if refusal is not None:
            self.count_upgrade("503")
        return refusal

    def open_upgrade(self, *, admitted: bool = False) -> None:
        """Let one upgrade in (it holds a place until :meth:`close_upgrade`), or refuse it
        (:class:`TunnelUnavailableError`) — unless its gate already ``admitted`` it
        (:meth:`refuse_upgrade`, asked by the HTTP protocol)."""
        if not admitted and (refusal := self.refuse_upgrade()) is not None:
            raise refusal
        self._pending += 1

    def close_upgrade(self) -> None:
        """The upgrade let in by :meth:`open_upgrade` ended (a tunnel, a refusal, a give-up)."""
        self._pending -= 1

    def count_upgrade(self, answer: str) -> None:
        """Count one tunnel upgrade answered ``answer`` (a status, or ``abandoned``)."""
        self.upgrades[answer] = self.upgrades.get(answer, 0) + 1

    def upgrade_abandoned(self, device_id: uuid.UUID) -> None:
        """The agent went away before its upgrade completed: a normal event, counted."""
        self.count_upgrade("abandoned")
        _LOGGER.debug("tunnel: device %s went away during its upgrade", device_id)

    # -- one tunnel ---------------------------------------------------------------
    async def serve(self, websocket: WebSocket, identity: DeviceIdentity) -> None:
        """Run the accepted ``websocket`` as ``identity``'s tunnel until it ends."""
        try:
            link = TunnelLink(
                websocket,
                device_id=identity.device_id,
                owner_user_id=identity.owner_user_id,
                org_id=identity.org_id,
                token_hash=identity.token_hash,
                config=self._config,
                max_message=self._settings.tunnel_max_message,
                session_token_id=identity.session_token_id,
            )
        except UpgradeAbandonedError:
            self.upgrade_abandoned(identity.device_id)
            return
        self.count_upgrade("101")
        link.epoch = self._next_epoch()
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        device_id = identity.device_id
        older = self._tunnels.get(device_id)
        self._tunnels[device_id] = link
        try:
            if older is not None:
                _LOGGER.info("tunnel: device %s reconnected; closing the older tunnel", device_id)
                if self.conflicts.superseded(device_id):
                    _LOGGER.warning(
                        "tunnel: device %s: tunnel conflict: %s; fix: %s",
                        device_id,
                        conflict.CAUSE,
                        conflict.FIX,
                    )
                    self._status.put(_conflict(link))
                await older.close(CLOSE_SUPERSEDED, "superseded")
            self._status.put(self._connected(link, utcnow()))
            await self._claim(link)
            _LOGGER.info("tunnel: device %s connected", device_id)
            if self.draining:  # came up while the node drains: go away at once
                self._going_away(link, random.uniform(0, self._settings.tunnel_drain_window))  # noqa: S311 - jitter
            if not link.session.is_closed:
                self._start_keepalive(link)
            await link.run()
        finally:
            self._bytes_to_devices += link.session.bytes_sent
            self._bytes_from_devices += link.session.bytes_received
            self._streams_refused += link.session.stats().streams_refused
            offline = False
            if self._tunnels.get(device_id) is link:
                del self._tunnels[device_id]
                self._seen.discard(device_id)
                offline = await self._release(device_id)
            self._status.put(
                _ended(link, offline=offline, quiet=self.conflicts.in_conflict(device_id))
            )
            if task is not None:
                self._serving.discard(task)
            _LOGGER.info(
                "tunnel: device %s disconnected (%s)", device_id, link.session.close_reason
            )

    def _next_epoch(self) -> int:
        """A new tunnel's epoch: nanoseconds now, strictly above the previous one here."""
        self._last_epoch = max(time.time_ns(), self._last_epoch + 1)
        return self._last_epoch

    def _connected(self, link: TunnelLink, now: datetime) -> StatusChange:
        """``online`` and the ``tunnel.connected`` event, for the next batch (no event while
        the device is in a tunnel conflict: its one ``tunnel.conflict`` event says it)."""
        if self.conflicts.in_conflict(link.device_id):
            return StatusChange(link.device_id, link.epoch, "online", at=now)
        node = self.registry.node_id if self.registry is not None else None
        event = audit.event_values(
            "tunnel.connected",
            actor=Actor.device(link.device_id),
            owner_id=link.owner_user_id,
            org_id=link.org_id,
            target_id=link.device_id,
            device_id=link.device_id,
            detail={"session_token_id": str(link.session_token_id), "node": node},
            client_addr=link.client_addr,
        )
        return StatusChange(
            link.device_id, link.epoch, "online", at=now, event=event, busy=lambda: link.busy
        )

    # -- the registry lease (cluster only) ---------------------------------------
    async def _claim(self, link: TunnelLink) -> None:
        """Take the device's lease for ``link``; a newer tunnel's lease (another node)
        supersedes it at once."""
        if self.registry is None:
            return
        try:
            lease = await self.registry.claim(link.device_id, epoch=link.epoch)
        except Exception as err:  # noqa: BLE001 - Redis away: the next renewal claims again
            _LOGGER.warning(
                "cluster: lease of device %s not taken: %s", link.device_id, type(err).__name__
            )
            return
        if lease is None:
            _LOGGER.info("tunnel: device %s has a newer tunnel elsewhere; closing", link.device_id)
            self._background(link.close(CLOSE_SUPERSEDED, "superseded"))
            return
        if self._tunnels.get(link.device_id) is link:
            self._leases[link.device_id] = lease

    async def _release(self, device_id: uuid.UUID) -> bool:
        """Drop the device's lease; False when another node holds the device now.

        Releases waiting at the same moment share one script call (:meth:`_release_batch`).
        """
        lease = self._leases.pop(device_id, None)
        if self.registry is None:
            return True
        return await self._releases.ask((device_id, lease.value if lease is not None else ""))

    async def _release_batch(
        self, releases: list[tuple[uuid.UUID, str]]
    ) -> dict[tuple[uuid.UUID, str], bool]:
        """Release these leases; for each, whether no other node holds the device now.
        Redis failing is one warning for the batch (its leases expire by themselves)."""
        assert self.registry is not None  # noqa: S101 - only asked in a cluster
        try:
            after = await self.registry.release_many(releases)
        except Exception as err:  # noqa: BLE001 - Redis away: the leases expire by themselves
            _LOGGER.warning(
                "cluster: %s leases not released: %s", len(releases), type(err).__name__
            )
            return {}
        node_id = self.registry.node_id
        return {
            (device_id, value): (owner := after.get(device_id)) is None or owner.node_id == node_id
            for device_id, value in releases
        }

    async def _lease_loop(self) -> None:
        """Cluster only: one :meth:`lease_round` every ``tunnel_ping_interval``, for the
        whole node (no task per tunnel)."""
        loop = asyncio.get_running_loop()
        interval = self._settings.tunnel_ping_interval
        due = loop.time()
        while True:
            due = max(due + interval, loop.time())
            await asyncio.sleep(due - loop.time())
            try:
                await self.lease_round()
            except Exception:  # a bug, not Redis or the database away: log it, go on
                _LOGGER.exception("tunnel: lease round failed")

    async def lease_round(self) -> None:
        """Renew the leases of every tunnel of this node and re-check their session tokens.

        :data:`LEASE_CHUNK` tunnels at a time (one Redis script call and one SQL
        statement each, the event loop given back between chunks). A lease another node
        holds now closes its tunnel here (4409 ``superseded``); a lease lost to nobody
        (expired, Redis restarted) is claimed again. A session token that no longer holds
        closes its tunnel (4401 ``revoked``): this catches a revocation whose pub/sub
        message was missed. Redis or the database away keeps the tunnels (the next round
        tries again) and logs one warning per round.
        """
        registry = self.registry
        if registry is None:
            return
        links = [link for link in self._tunnels.values() if not link.session.is_closed]
        redis_error: Exception | None = None
        db_error: Exception | None = None
        for start in range(0, len(links), LEASE_CHUNK):
            if start:
                await asyncio.sleep(0)
            chunk = links[start : start + LEASE_CHUNK]
            if redis_error is None:  # Redis away: not one time-out per chunk
                try:
                    await self._renew_chunk(registry, chunk)
                except Exception as err:  # noqa: BLE001 - Redis away: keep the tunnels, retry
                    redis_error = err
            if db_error is None:
                try:
                    await self._recheck_chunk(chunk)
                except Exception as err:  # noqa: BLE001 - the database away: retry next round
                    db_error = err
        if redis_error is not None:
            _LOGGER.warning(
                "cluster: leases of this node's %s tunnel(s) not renewed: %s",
                len(links),
                type(redis_error).__name__,
            )
        if db_error is not None:
            _LOGGER.warning(
                "tunnel: session tokens of this node's tunnels not re-checked: %s",
                type(db_error).__name__,
            )

    def _current(self, link: TunnelLink) -> bool:
        """Whether ``link`` is still the device's tunnel here, and open."""
        return self._tunnels.get(link.device_id) is link and not link.session.is_closed

    async def _renew_chunk(self, registry: TunnelRegistry, links: list[TunnelLink]) -> None:
        """Renew the leases of ``links``; supersede or claim again the ones not renewed."""
        held = [(link, self._leases.get(link.device_id)) for link in links]
        lost = await registry.renew_many([lease for _, lease in held if lease is not None])
        stale = [link for link, lease in held if lease is None or lease.device_id in lost]
        if not stale:
            return
        owners = await registry.owners(link.device_id for link in stale)
        claims: list[TunnelLink] = []
        for link in stale:
            if not self._current(link):  # ended, or a newer tunnel here took its place
                continue
            owner = owners.get(link.device_id)
            if owner is not None and owner.node_id != registry.node_id:
                _LOGGER.info(
                    "tunnel: device %s is now held by node %s; closing here",
                    link.device_id,
                    owner.node_id,
                )
                self._leases.pop(link.device_id, None)
                self._background(link.close(CLOSE_SUPERSEDED, "superseded"))
            else:
                claims.append(link)
        if not claims:
            return
        taken = await registry.claim_many([(link.device_id, link.epoch) for link in claims])
        for link in claims:
            lease = taken.get(link.device_id)
            if not self._current(link):
                continue
            if lease is None:  # a newer tunnel of the device came up on another node
                _LOGGER.info(
                    "tunnel: device %s has a newer tunnel elsewhere; closing", link.device_id
                )
                self._background(link.close(CLOSE_SUPERSEDED, "superseded"))
            else:
                self._leases[link.device_id] = lease

    async def _recheck_chunk(self, links: list[TunnelLink]) -> None:
        """Close the tunnels among ``links`` whose session token no longer holds."""
        async with self._db.reading() as conn:
            gone = await tokens.sessions_not_holding(conn, {link.token_hash for link in links})
        for link in links:
            if link.token_hash in gone and self._current(link):
                _LOGGER.info(
                    "tunnel: device %s credentials revoked; closing its tunnel", link.device_id
                )
                self._background(link.close(CLOSE_REVOKED, "revoked"))

    def _start_keepalive(self, link: TunnelLink) -> None:
        """Ping every interval (a yamux timer, no task); a miss marks ``reconnecting``,
        ``tunnel_ping_misses`` in a row close the tunnel."""
        device_id = link.device_id

        def on_answer() -> None:
            link.healthy = True
            self._seen.add(device_id)

        def on_miss(misses: int) -> bool:
            if link.healthy:
                link.healthy = False
                self._seen.discard(device_id)
                self._status.put(StatusChange(device_id, link.epoch, "reconnecting"))
            if misses >= self._settings.tunnel_ping_misses:
                _LOGGER.info("tunnel: device %s missed %s keepalives", device_id, misses)
                self._background(link.close(CLOSE_KEEPALIVE, "keepalive timeout"))
                return False
            return True

        link.session.keep_alive(
            self._settings.tunnel_ping_interval,
            self._settings.tunnel_ping_timeout,
            on_miss=on_miss,
            on_answer=on_answer,
        )

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (a status write, a close) as a task the hub keeps until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def device_revoked(self, device_id: uuid.UUID) -> None:
        """Revocation hook: close the device's tunnel if its session token no longer holds."""
        link = self.get(device_id)
        if link is None:
            return
        async with self._db.transaction() as conn:
            still_valid = await tokens.session_holds(conn, link.token_hash)
        if not still_valid:
            _LOGGER.info("tunnel: device %s credentials revoked; closing its tunnel", device_id)
            await link.close(CLOSE_REVOKED, "revoked")

    # -- batching -----------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.tunnel_status_interval)
            await self.flush()

    async def flush(self) -> None:
        """Write one batch: every healthy device seen (ping or traffic) since the last one."""
        seen = self._seen
        self._seen = set()
        for device_id, link in self._tunnels.items():
            if link.traffic_since_last_check():
                seen.add(device_id)
        epochs = {d: self._tunnels[d].epoch for d in seen if self._healthy(d)}
        if epochs:
            async with self._status.lock:  # never beside a status batch (row locks)
                await self._write(repository.mark_seen, epochs, utcnow())
        if self._refuse_busy and self.registry is not None and self._tunnels:
            await self._refresh_busy()

    def _healthy(self, device_id: uuid.UUID) -> bool:
        link = self._tunnels.get(device_id)
        return link is not None and link.healthy

    @property
    def status_backlog(self) -> int:
        """Status changes and events waiting for the database."""
        return self._status.backlog

    async def _refresh_busy(self) -> None:
        """Cluster with ``proxy_during_deploy=refuse``: the agent's status report may land on
        another node, so read the stored busy flags of this node's tunnels once a batch."""
        try:
            async with self._db.reading() as conn:
                flags = await repository.busy_flags(conn, list(self._tunnels))
        except Exception as err:  # noqa: BLE001 - best effort, like the status writes
            _LOGGER.warning("tunnel: busy refresh failed: %s", type(err).__name__)
            return
        for device_id, busy in flags.items():
            link = self._tunnels.get(device_id)
            if link is not None:
                link.busy = busy

    async def _write(
        self,
        statement: Callable[Concatenate[AsyncConnection, _P], Awaitable[object]],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> None:
        """Run one status statement in its own transaction; a failure is logged, not raised."""
        try:
            async with self._db.transaction() as conn:
                await statement(conn, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - status is best effort; the next write repairs it
            _LOGGER.warning("tunnel: status write failed: %s", type(err).__name__)


def _tunnel_capacity(reserve: int) -> int:
    """Tunnels this process may hold: its soft limit on open files less ``reserve``."""
    soft, _ = nofile_limits()
    if soft < 0:  # unlimited
        return 2**31
    return max(0, soft - reserve)


def _conflict(link: TunnelLink) -> StatusChange:
    """The one ``tunnel.conflict`` event of an episode, with the cause and the fix."""
    event = audit.event_values(
        "tunnel.conflict",
        actor=SYSTEM,
        owner_id=link.owner_user_id,
        org_id=link.org_id,
        target_id=link.device_id,
        device_id=link.device_id,
        detail={"reason": conflict.CAUSE, "fix": conflict.FIX},
        client_addr=link.client_addr,
    )
    return StatusChange(link.device_id, link.epoch, None, event=event)


def _ended(link: TunnelLink, *, offline: bool, quiet: bool = False) -> StatusChange:
    """The tunnel ended: ``offline`` (when no newer tunnel holds the device) and its event.

    Closed by this server as superseded or revoked: ``tunnel.superseded`` /
    ``tunnel.closed_revoked``; otherwise ``tunnel.disconnected`` with the reason (the
    agent's own close or a lost connection has the device as actor; the node's
    shutdown has the system, reason ``server shutting down``).
    """
    closed = link.closed_by_server
    code = closed[0] if closed else None
    detail: dict[str, str] = {}
    actor = SYSTEM
    if code == CLOSE_SUPERSEDED:
        if quiet:  # a flap of a tunnel conflict: its episode has one event
            return StatusChange(link.device_id, link.epoch, "offline" if offline else None)
        action = "tunnel.superseded"
    elif code == CLOSE_REVOKED:
        action = "tunnel.closed_revoked"
    else:
        action = "tunnel.disconnected"
        if closed is not None:
            detail["reason"] = closed[1]
        else:
            actor = Actor.device(link.device_id)
            why = link.session.close_reason
            detail["reason"] = type(why).__name__ if why is not None else "closed by the agent"
    event = audit.event_values(
        action,
        actor=actor,
        owner_id=link.owner_user_id,
        org_id=link.org_id,
        target_id=link.device_id,
        device_id=link.device_id,
        detail=detail,
        client_addr=link.client_addr,
    )
    return StatusChange(link.device_id, link.epoch, "offline" if offline else None, event=event)
