"""The agent's main loop: pair if needed, keep the tunnel up, forward, report USB status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import httpx

from visiona.agent import credentials
from visiona.agent.credentials import AgentAuthError, Credentials
from visiona.agent.deploy import DeploySettings, default_models_dir, dispatch_stream
from visiona.agent.usb import usb_status
from visiona.agent.websocket import open_tunnel_socket
from visiona.wire import API_PREFIX, CLOSE_REVOKED, STATUS_PATH, TUNNEL_PATH, UsbStatus
from visiona.yamux import Config, Session, YamuxError

_LOGGER = logging.getLogger(__name__)
EXIT_AUTH_REFUSED = 3


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


class Backoff:
    """Exponential backoff with jitter: 0.5 s doubling up to 30 s; ``reset`` starts over."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        """Start at ``first`` seconds."""
        self._first = first
        self._cap = cap
        self._next = first

    def reset(self) -> None:
        """The connection stayed up long enough: the next failure waits ``first`` again."""
        self._next = self._first

    def next_delay(self) -> float:
        """The next wait: between half and all of the current step (then the step doubles)."""
        step = self._next
        self._next = min(self._cap, step * 2)
        return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not cryptography


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

    def __init__(self, options: AgentOptions, *, stable_after: float = 10.0) -> None:
        """Prepare the agent; nothing connects before :meth:`run`."""
        self._options = options
        self._stable_after = stable_after
        self._config = Config(max_stream_window=options.stream_window)
        self._deploy = DeploySettings(
            models_dir=options.models_dir or default_models_dir(), hook=options.deploy_hook
        )
        self.connected = asyncio.Event()
        self.connections = 0

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set (exit code 0) or the server refuses us (exit code 3)."""
        async with httpx.AsyncClient(timeout=15) as http:
            try:
                creds = await self._credentials(http)
            except AgentAuthError as err:
                _LOGGER.error("agent: %s; get a new pairing token and run again", err)  # noqa: TRY400 - an expected refusal, no traceback
                return EXIT_AUTH_REFUSED
            _LOGGER.info(
                "agent: device %s, forwarding to %s:%s",
                creds.device_id,
                self._options.forward_host,
                self._options.forward_port,
            )
            backoff = Backoff()
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                started = loop.time()
                try:
                    await self._connect_once(http, creds, stop)
                except AgentAuthError as err:
                    _LOGGER.error(  # noqa: TRY400 - an expected refusal, no traceback
                        "agent: %s; remove %s and pair again with a new pairing token",
                        err,
                        self._options.session_file,
                    )
                    return EXIT_AUTH_REFUSED
                except (OSError, TimeoutError, YamuxError) as err:
                    _LOGGER.warning("agent: tunnel failed: %s", err or type(err).__name__)
                except Exception as err:  # noqa: BLE001 - picows raises its own handshake errors
                    _LOGGER.warning("agent: tunnel failed: %s: %s", type(err).__name__, err)
                if stop.is_set():
                    break
                if loop.time() - started >= self._stable_after:
                    backoff.reset()
                delay = backoff.next_delay()
                _LOGGER.info("agent: reconnecting in %.1fs", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        return 0

    async def _credentials(self, http: httpx.AsyncClient) -> Credentials:
        options = self._options
        creds = credentials.load(options.session_file, options.server)
        if creds is not None:
            return creds
        if not options.pairing_token:
            raise AgentAuthError(401, "pairing (no session stored and no --token given)")
        creds = await credentials.pair(
            http,
            options.server,
            pairing_token=options.pairing_token,
            name=options.name,
            serial_number=options.serial_number,
            device_type=options.device_type,
        )
        credentials.store(options.session_file, creds)
        _LOGGER.info("agent: paired; session stored in %s", options.session_file)
        return creds

    async def _connect_once(
        self, http: httpx.AsyncClient, creds: Credentials, stop: asyncio.Event
    ) -> None:
        socket = await open_tunnel_socket(tunnel_url(creds.server), creds.session_token)
        session = Session(socket.feed, client=False, config=self._config)
        self.connections += 1
        self.connected.set()
        _LOGGER.info("agent: tunnel up")
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        reporter = loop.create_task(self._report_usb(http, creds))
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
        _LOGGER.info(
            "agent: tunnel closed (code %s %s)", socket.close_code, socket.close_reason or ""
        )
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
                        stream, options.forward_host, options.forward_port, self._deploy
                    )
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def _report_usb(self, http: httpx.AsyncClient, creds: Credentials) -> None:
        """POST the USB status on connect and whenever it changes."""
        last: UsbStatus | None = None
        url = f"{creds.server}{API_PREFIX}{STATUS_PATH}"
        headers = {"Authorization": f"Bearer {creds.session_token}"}
        while True:
            status = await asyncio.to_thread(usb_status)
            if status != last:
                try:
                    response = await http.post(url, json={"usb_status": status}, headers=headers)
                    if response.status_code == 204:
                        last = status
                        _LOGGER.info("agent: reported USB status %s", status)
                    else:
                        _LOGGER.warning("agent: status report answered %s", response.status_code)
                except httpx.HTTPError as err:
                    _LOGGER.warning("agent: status report failed: %s", type(err).__name__)
            await asyncio.sleep(self._options.usb_poll_interval)
