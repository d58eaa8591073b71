"""The agent's main loop: pair if needed, keep the tunnel up, forward, report USB status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from visiona.agent import credentials
from visiona.agent.busy import BusyState
from visiona.agent.credentials import AgentAuthError, Credentials, ServerUnavailableError
from visiona.agent.deploy import DeploySettings, default_models_dir, dispatch_stream
from visiona.agent.policy import Policy
from visiona.agent.usb import usb_status
from visiona.agent.websocket import UpgradeRefusedError, open_tunnel_socket
from visiona.wire import (
    API_PREFIX,
    CLOSE_GOING_AWAY,
    CLOSE_KEEPALIVE,
    CLOSE_NORMAL,
    CLOSE_REVOKED,
    CLOSE_SUPERSEDED,
    CLOSE_UNSUPPORTED,
    STATUS_PATH,
    TUNNEL_PATH,
    UsbStatus,
    reconnect_hint,
)
from visiona.yamux import Config, Session, YamuxError

_LOGGER = logging.getLogger(__name__)
EXIT_AUTH_REFUSED = 3
#: WebSocket close codes the server uses (docs/tunnel-protocol.md §12) and what they mean
CLOSE_MEANINGS = {
    CLOSE_NORMAL: "normal close",
    CLOSE_GOING_AWAY: "server shutting down",
    CLOSE_UNSUPPORTED: "binary messages only",
    1006: "connection lost",
    CLOSE_REVOKED: "credentials revoked",
    CLOSE_KEEPALIVE: "keepalive timeout",
    CLOSE_SUPERSEDED: "superseded by another tunnel of this device",
}
_HOST = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)$"
)


def check_server_url(server: str) -> None:
    """``ValueError`` with one clear line unless ``server`` is an http(s) URL with a host."""
    parts = urlsplit(server)
    if parts.scheme not in {"http", "https"}:
        raise ValueError(f"--server must start with http:// or https://, got {server!r}")
    host = parts.netloc.rpartition("@")[2]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") and host.count(":") == 1 else host
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"--server has a bad port: {server!r}") from None
    if not host or not _HOST.match(host):
        raise ValueError(f"--server has no valid host name: {server!r}")


def describe_close(code: int | None, reason: str, *, stopping: bool) -> str:
    """The close of a tunnel in words: ``server shutting down (1001)``, never ``code None``."""
    if code is None:
        return "agent stopping" if stopping else "connection lost without a close frame"
    meaning = CLOSE_MEANINGS.get(code) or reason or "closed"
    detail = f": {reason}" if reason and reason != meaning else ""
    return f"{meaning} ({code}{detail})"


@dataclass(frozen=True)
class AgentOptions:
    """What ``visiona agent`` was asked to do."""

    server: str
    forward_host: str
    forward_port: int
    session_file: Path
    pairing_token: str | None = None
    name: str = "visionA agent"
    serial_number: str = "unknown"
    device_type: str = "kl520"
    usb_poll_interval: float = 5.0
    stream_window: int = 16 * 1024 * 1024
    #: where deployed models are written (None: :func:`~visiona.agent.deploy.default_models_dir`)
    models_dir: Path | None = None
    #: command run after each deployment (see :mod:`visiona.agent.deploy`)
    deploy_hook: str | None = None
    #: renew the session token this many seconds before it expires
    renew_before: float = 30 * 86400.0
    #: allow rules and the deploy switch (default: everything forwarded, deployments on)
    policy: Policy = field(default_factory=Policy)
    #: URL polled for busy/idle (see :mod:`visiona.agent.busy`)
    busy_probe: str | None = None
    #: read ``X-Visiona-Busy`` from the local service's answers
    busy_header: bool = False
    busy_poll_interval: float = 2.0


#: After a 4409 ``superseded`` close the agent waits this long before reconnecting,
#: doubling each time in a row up to the cap: two agents of one device then stop
#: knocking each other off every second.
SUPERSEDED_BACKOFF_FIRST = 5.0
SUPERSEDED_BACKOFF_CAP = 300.0

#: After a restart hint (a 1001 close that says when to come back) the node is expected
#: back within seconds: this many failed attempts in a row are retried every
#: ``RESTART_STEP`` s (jittered) before the usual doubling resumes. A refused connection
#: costs the restarting node nothing, and the agents are back a second after it listens,
#: instead of after a backoff that grew to 8-16 s while the process started.
RESTART_ATTEMPTS = 30
RESTART_STEP = 1.0


class Backoff:
    """Exponential backoff with jitter: 0.5 s doubling up to 30 s; ``reset`` starts over.

    After :meth:`expect_restart` (the server said it is restarting) the next
    ``RESTART_ATTEMPTS`` failures wait ``RESTART_STEP`` s each (jittered) instead.
    """

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        """Start at ``first`` seconds."""
        self._first = first
        self._cap = cap
        self._next = first
        self._steady = 0

    def reset(self) -> None:
        """The connection stayed up long enough: the next failure waits ``first`` again."""
        self._next = self._first
        self._steady = 0

    def expect_restart(self) -> None:
        """The server is restarting: retry at a steady short pace for a while."""
        self._steady = RESTART_ATTEMPTS

    def next_delay(self) -> float:
        """The next wait: between half and all of the current step (then the step doubles)."""
        if self._steady > 0:
            self._steady -= 1
            return RESTART_STEP / 2 + random.uniform(0, RESTART_STEP / 2)  # noqa: S311 - jitter
        step = self._next
        self._next = min(self._cap, step * 2)
        return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not cryptography


def retry_after_delay(retry_after: float) -> float:
    """The wait before trying again after ``Retry-After: retry_after``: that much plus up to
    half as much again (jitter: the agents told the same figure must not all come back
    in the same second)."""
    return retry_after + random.uniform(0, retry_after / 2)  # noqa: S311 - jitter


def tunnel_url(server: str) -> str:
    """``http(s)://host`` → ``ws(s)://host/api/v1/agent/tunnel``."""
    base = server.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return f"{base}{API_PREFIX}{TUNNEL_PATH}"


class Agent:
    """One agent process: call :meth:`run` and set ``stop`` to end it."""

    def __init__(
        self,
        options: AgentOptions,
        *,
        stable_after: float = 10.0,
        superseded_first: float = SUPERSEDED_BACKOFF_FIRST,
    ) -> None:
        """Prepare the agent; nothing connects before :meth:`run`.

        ``superseded_first``: the first wait after this agent's tunnel was superseded
        by another agent of the same device (doubling each time in a row, up to
        :data:`SUPERSEDED_BACKOFF_CAP`).
        """
        self._options = options
        self._stable_after = stable_after
        self._superseded_first = superseded_first
        #: The close code of the last tunnel (None before the first or once handled).
        self.last_close_code: int | None = None
        #: How many tunnels in a row were superseded by another agent of this device.
        self.superseded_in_a_row = 0
        self._config = Config(max_stream_window=options.stream_window)
        self.busy = BusyState()
        #: ``{"id", "sha256"}`` of the last successful deployment (kept next to the session
        #: file across restarts), reported with the status; None: none known
        self.current_model = credentials.load_current_model(options.session_file)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deploy = DeploySettings(
            models_dir=options.models_dir or default_models_dir(),
            hook=options.deploy_hook,
            on_deployed=self._deployed,
            current_model=lambda: self.current_model,
        )
        self._watch = self.busy.watch_head if options.busy_header else None
        self.connected = asyncio.Event()
        self.connections = 0
        self.renewals = 0
        #: the wait the server asked for before the next attempt (a reconnect hint in a
        #: 1001 close, ``Retry-After`` on a refused upgrade); None: the usual backoff
        self._asked_delay: float | None = None
        #: the last tunnel ended with a restart hint: retry at a steady pace (see Backoff)
        self._restart_expected = False
        self._creds = Credentials(server="", device_id="", session_token="", expires_at="")

    def _deployed(self, model_id: str, sha256: str) -> None:
        """A deployment succeeded (called in a worker thread): record the model on disk and
        wake the status reporter, which tells the server."""
        credentials.store_current_model(self._options.session_file, model_id, sha256)
        model = {"id": model_id, "sha256": sha256}
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._set_current_model, model)

    def _set_current_model(self, model: dict[str, str]) -> None:
        self.current_model = model
        self.busy.changed.set()  # the reporter's wake-up

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set (exit code 0) or the server refuses us (exit code 3)."""
        session_file = self._options.session_file
        self._loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(timeout=15) as http:
            try:
                creds = await self._credentials(http, stop)
            except AgentAuthError as err:
                fix = (
                    "get a usable enrollment key and run again with --enroll-key"
                    if "enrollment key" in str(err)
                    else "get a new pairing token and run again with --token"
                )
                _LOGGER.error("agent: %s; %s", err, fix)  # noqa: TRY400 - an expected refusal, no traceback
                return EXIT_AUTH_REFUSED
            if creds is None:  # stopped while waiting for the server
                return 0
            self._creds = creds
            _LOGGER.info(
                "agent: device %s, forwarding to %s:%s",
                creds.device_id,
                self._options.forward_host,
                self._options.forward_port,
            )
            backoff = Backoff()
            superseded = Backoff(first=self._superseded_first, cap=SUPERSEDED_BACKOFF_CAP)
            loop = asyncio.get_running_loop()
            renewer = loop.create_task(self._renew_loop(http, stop))
            prober = (
                loop.create_task(
                    self.busy.probe(
                        http, self._options.busy_probe, self._options.busy_poll_interval
                    )
                )
                if self._options.busy_probe
                else None
            )
            try:
                while not stop.is_set():
                    started = loop.time()
                    presented = self._creds.session_token
                    self._asked_delay = None
                    try:
                        await self._connect_once(http, stop)
                    except AgentAuthError as err:
                        if self._creds.session_token != presented:
                            _LOGGER.info("agent: session renewed meanwhile; reconnecting")
                            continue
                        _LOGGER.error(  # noqa: TRY400 - an expected refusal, no traceback
                            "agent: %s; the dead session is in %s: pair again with a new "
                            "pairing token (--token)",
                            err,
                            session_file,
                        )
                        credentials.store_state(session_file, "refused", str(err))
                        return EXIT_AUTH_REFUSED
                    except (OSError, TimeoutError, YamuxError) as err:
                        _LOGGER.warning("agent: tunnel failed: %s", err or type(err).__name__)
                    except Exception as err:  # noqa: BLE001 - picows raises its own handshake errors
                        _LOGGER.warning("agent: tunnel failed: %s: %s", type(err).__name__, err)
                    if stop.is_set():
                        break
                    if await self._waited_superseded(superseded, stop):
                        continue
                    await self._pause(backoff, started, stop)
            finally:
                renewer.cancel()
                if prober is not None:
                    prober.cancel()
                await asyncio.gather(renewer, *([prober] if prober else []), return_exceptions=True)
                await self._deploy.applying.stop()  # a hook still running is killed
        _LOGGER.info("agent: stopped")
        return 0

    async def _pause(self, backoff: Backoff, started: float, stop: asyncio.Event) -> None:
        """Wait before the next attempt: as long as the server asked (``Retry-After``),
        else the backoff's next delay (started over after a tunnel that stayed up)."""
        if asyncio.get_running_loop().time() - started >= self._stable_after:
            backoff.reset()
        if self._restart_expected:
            self._restart_expected = False
            backoff.expect_restart()
        asked = self._asked_delay  # the server said when
        delay = backoff.next_delay() if asked is None else asked
        _LOGGER.info("agent: reconnecting in %.1fs", delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)

    async def _waited_superseded(self, superseded: Backoff, stop: asyncio.Event) -> bool:
        """After a 4409 ``superseded`` close wait (True); after any other close, start the
        superseded backoff over (False).

        Another agent holds this device: taking it back at once only knocks that one off
        again. Wait longer each time in a row, and say why.
        """
        if self.last_close_code != CLOSE_SUPERSEDED:
            self.superseded_in_a_row = 0
            superseded.reset()
            return False
        self.superseded_in_a_row += 1
        delay = superseded.next_delay()
        _LOGGER.warning(
            "agent: another agent connected as this device (superseded %d time(s) in a "
            "row); waiting %.1fs before taking it back. Two agents on one device: give "
            "each its own pairing (--serial, --session-file) or stop one",
            self.superseded_in_a_row,
            delay,
        )
        self.last_close_code = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        return True

    async def _credentials(
        self, http: httpx.AsyncClient, stop: asyncio.Event
    ) -> Credentials | None:
        """The session to use: a new pairing when ``--token`` is new, else the stored one."""
        options = self._options
        stored = credentials.load(options.session_file, options.server)
        token = options.pairing_token
        if token and (stored is None or stored.paired_with != credentials.token_digest(token)):
            try:
                creds = await self._pair_with_retry(http, token, stop)
            except AgentAuthError as err:
                if stored is None:
                    raise
                _LOGGER.warning("agent: %s; keeping the stored session", err)
                return stored
            if creds is None:
                return None
            credentials.store(options.session_file, creds)
            _LOGGER.info(
                "agent: paired; session stored in %s%s",
                options.session_file,
                " (replacing the previous session)" if stored is not None else "",
            )
            return creds
        if stored is not None:
            return stored
        raise AgentAuthError(
            401, f"pairing (no session in {options.session_file} and no --token given)"
        )

    async def _pair_with_retry(
        self, http: httpx.AsyncClient, token: str, stop: asyncio.Event
    ) -> Credentials | None:
        """Pair, retrying with backoff and jitter while the server is unreachable or 5xx."""
        options = self._options
        backoff = Backoff()
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:
                return await credentials.pair(
                    http,
                    options.server,
                    pairing_token=token,
                    name=options.name,
                    serial_number=options.serial_number,
                    device_type=options.device_type,
                )
            except ServerUnavailableError as err:
                delay = backoff.next_delay()
                _LOGGER.warning(
                    "agent: pairing attempt %d failed: %s; retrying in %.1fs", attempt, err, delay
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return None

    def _renew_delay(self) -> float:
        """Seconds until renewal is due: ``renew_before`` ahead of expiry, but never in the
        first two thirds of the token's life (so a short-lived token is not renewed
        over and over)."""
        expires, issued = self._creds.expires(), self._creds.issued()
        if expires is None:
            return 86400.0
        ahead = self._options.renew_before
        if issued is not None:
            ahead = min(ahead, (expires - issued).total_seconds() / 3)
        due = (expires - datetime.now(UTC)).total_seconds() - ahead
        return max(0.0, due)

    async def _renew_loop(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Renew the session token ``renew_before`` seconds before it expires, and store it."""
        backoff = Backoff(first=5.0, cap=600.0)
        while not stop.is_set():
            delay = self._renew_delay()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(delay, 86400.0))
                continue
            try:
                renewed = await credentials.renew(http, self._creds)
            except AgentAuthError as err:
                _LOGGER.warning("agent: session renewal refused: %s", err)
                return
            except ServerUnavailableError as err:
                wait = backoff.next_delay()
                _LOGGER.warning("agent: session renewal failed: %s; retrying in %.0fs", err, wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                continue
            backoff.reset()
            credentials.store(self._options.session_file, renewed)
            self._creds = renewed
            self.renewals += 1
            _LOGGER.info("agent: session renewed; it now expires %s", renewed.expires_at)

    async def _connect_once(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        creds = self._creds
        try:
            socket = await open_tunnel_socket(tunnel_url(creds.server), creds.session_token)
        except UpgradeRefusedError as err:  # 503 pacing or draining: come back when asked
            if err.retry_after is not None:
                self._asked_delay = retry_after_delay(err.retry_after)
            raise
        session = Session(socket.feed, client=False, config=self._config)
        self.connections += 1
        self.connected.set()
        _LOGGER.info("agent: tunnel up")
        credentials.store_state(
            self._options.session_file, "up", policy=self._options.policy.describe()
        )
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        reporter = loop.create_task(self._report_status(http))
        acceptor = loop.create_task(self._accept(session, tasks))
        stopper = loop.create_task(stop.wait())
        closed = loop.create_task(session.closed.wait())
        try:
            await asyncio.wait({stopper, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.connected.clear()
            for task in (reporter, acceptor, stopper, closed):
                task.cancel()
            await session.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(
                reporter, acceptor, stopper, closed, *tasks, return_exceptions=True
            )
        self._asked_delay = reconnect_hint(socket.close_code, socket.close_reason)
        self._restart_expected = self._asked_delay is not None
        what = describe_close(socket.close_code, socket.close_reason, stopping=stop.is_set())
        _LOGGER.info("agent: tunnel closed: %s", what)
        credentials.store_state(
            self._options.session_file, "stopped" if stop.is_set() else "down", what
        )
        self.last_close_code = socket.close_code
        if socket.close_code == CLOSE_REVOKED:
            _LOGGER.warning("agent: the server revoked this agent's credentials")

    async def _accept(self, session: Session, tasks: set[asyncio.Task[None]]) -> None:
        options = self._options
        loop = asyncio.get_running_loop()
        with contextlib.suppress(YamuxError):
            while True:
                stream = await session.accept_stream()
                task = loop.create_task(
                    dispatch_stream(
                        stream,
                        options.forward_host,
                        options.forward_port,
                        self._deploy,
                        policy=options.policy,
                        on_response_head=self._watch,
                    )
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def _report_status(self, http: httpx.AsyncClient) -> None:
        """POST the USB status (and busy/idle, once known) on connect and on each change,
        with the TCP ports the policy allows (so the cloud refuses others before asking,
        and its console shows the command to reach them) and the model of the last
        successful deployment (so the cloud's record is right even when it missed a
        deployment's outcome) — the first one only once no deployment is being applied.
        A server that predates these fields (422) gets the report without them."""
        last: tuple[UsbStatus, bool | None, dict[str, str] | None] | None = None
        ports: list[int] | None = sorted(self._options.policy.ports)
        extras = True  # tcp_ports and current_model; off for an older server
        # The first report on a tunnel says what this agent runs once every deployment
        # it was applying (an earlier tunnel's, which a drop does not stop) has ended:
        # the server decides on it whether a model it lost track of must be sent again.
        await self._deploy.applying.idle()
        while True:
            self.busy.changed.clear()
            status = (await asyncio.to_thread(usb_status), self.busy.busy, self.current_model)
            if status != last:
                creds = self._creds  # renewal may have replaced the token
                url = f"{creds.server}{API_PREFIX}{STATUS_PATH}"
                headers = {"Authorization": f"Bearer {creds.session_token}"}
                body: dict[str, object] = {"usb_status": status[0]}
                if status[1] is not None:
                    body["busy"] = status[1]
                if extras and ports is not None:
                    body["tcp_ports"] = ports
                if extras and status[2] is not None:
                    body["current_model"] = status[2]
                try:
                    response = await http.post(url, json=body, headers=headers)
                    newer = "tcp_ports" in body or "current_model" in body
                    if response.status_code == 422 and newer:
                        _LOGGER.info(
                            "agent: the server does not take tcp_ports/current_model; "
                            "reporting without"
                        )
                        extras = False
                        continue
                    if response.status_code == 204:
                        last = status
                        _LOGGER.info("agent: reported status %s", body)
                    else:
                        _LOGGER.warning("agent: status report answered %s", response.status_code)
                except httpx.HTTPError as err:
                    _LOGGER.warning("agent: status report failed: %s", type(err).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.busy.changed.wait(), self._options.usb_poll_interval)
