"""``visiona forward``: reach a TCP port of a device's PC through its tunnel.

Two ways to use it:

- ``visiona forward DEVICE [LOCAL_ADDR:]LOCAL_PORT:REMOTE_PORT`` listens on
  ``LOCAL_ADDR:LOCAL_PORT`` (127.0.0.1 unless given) and carries each accepted
  connection over its own WebSocket (``GET /api/v1/devices/{id}/tcp/{port}``) to
  ``127.0.0.1:REMOTE_PORT`` on the device's PC. Ctrl-C (or SIGTERM) stops listening and
  ends the open connections; a connection whose forward the server ends (the tunnel
  dropped, the device was unpaired, a timeout) is closed with one line on stderr.
- ``visiona forward --stdio DEVICE PORT`` carries its standard input and output, for
  ``ssh -o ProxyCommand='visiona forward --stdio %h 22' user@DEVICE``.

DEVICE is the device's id, a unique prefix of it, or its unique name. The credentials
are the ones ``visiona login`` saved. Bytes travel as binary WebSocket messages; an
empty message is a half-close (docs/api-spec.md, "TCP forwards").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import stat
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from visiona.client.errors import ClientError
from visiona.wire import API_PREFIX

_LOGGER = logging.getLogger(__name__)
_READ_SIZE = 256 * 1024
#: WebSocket close codes of a forward (visiona/tunnel/tcp_endpoints.py) in words.
_CLOSES = {
    1000: "closed",
    1001: "the server is shutting down",
    4401: "the device was unpaired",
    4403: "refused by the device's agent",
    4408: "timed out",
    4502: "the device cannot be reached",
    4504: "the device's agent did not answer",
}


@dataclass(frozen=True)
class Target:
    """Where a forward goes: the server, the credentials, the device and its port."""

    server: str
    token: str
    device_id: str
    port: int
    #: the organisation acted in (``X-Visiona-Org``); None: the personal one, or a key's
    org_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The handshake's headers: the bearer, and the organisation when chosen."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.org_id:
            headers["X-Visiona-Org"] = self.org_id
        return headers

    @property
    def url(self) -> str:
        """The forward's WebSocket URL."""
        base = self.server.rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base.removeprefix("https://")
        elif base.startswith("http://"):
            base = "ws://" + base.removeprefix("http://")
        return f"{base}{API_PREFIX}/devices/{self.device_id}/tcp/{self.port}"


def parse_port(text: str) -> int:
    """A TCP port (1-65535) or a :class:`ClientError`."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ClientError(f"a port is a number from 1 to 65535, got {text!r}")
    return int(text)


def parse_spec(spec: str) -> tuple[str, int, int]:
    """``[LOCAL_ADDR:]LOCAL_PORT:REMOTE_PORT`` → (address, local port, remote port)."""
    address, _, rest = spec.rpartition(":")
    if not address:
        raise ClientError(f"expected [LOCAL_ADDR:]LOCAL_PORT:REMOTE_PORT, got {spec!r}")
    remote = parse_port(rest)
    host, _, local = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    local_port = int(local) if local.isdigit() and int(local) <= 65535 else -1
    if local_port < 0:
        raise ClientError(f"expected [LOCAL_ADDR:]LOCAL_PORT:REMOTE_PORT, got {spec!r}")
    return host or "127.0.0.1", local_port, remote


def resolve_device(devices: list[dict[str, Any]], name: str) -> str:
    """The id of the one device whose id is ``name``, starts with it, or is named so."""
    exact = [d for d in devices if str(d["id"]) == name.lower()]
    if exact:
        return str(exact[0]["id"])
    named = [d for d in devices if d.get("name") == name]
    prefixed = [d for d in devices if str(d["id"]).startswith(name.lower())]
    matches = {str(d["id"]) for d in named} or {str(d["id"]) for d in prefixed}
    if len(matches) == 1:
        return matches.pop()
    if not matches:
        raise ClientError(f"no device named {name!r} or with an id starting so")
    raise ClientError(f"{name!r} names {len(matches)} devices; give more of the id")


def check_port(device: dict[str, Any], port: int) -> None:
    """A :class:`ClientError` when the device's agent reported its ports and ``port`` is not
    among them (the listener fails before it listens)."""
    allowed = device.get("tcp_ports")
    if allowed is not None and port not in allowed:
        listed = ", ".join(str(p) for p in allowed) or "none"
        raise ClientError(
            f"the device's agent does not allow port {port} (allowed: {listed}); "
            f"run it with --allow-port {port}"
        )


def describe_close(code: int | None, reason: str) -> str:
    """A server's close in words: ``refused by the device's agent: … (4403)``."""
    if code is None:
        return "the connection to the server was lost"
    meaning = _CLOSES.get(code, "closed")
    return f"{meaning}: {reason} ({code})" if reason else f"{meaning} ({code})"


async def open_forward(target: Target) -> ClientConnection:
    """Open the forward's WebSocket; a refusal before the upgrade is a :class:`ClientError`
    with the server's own message."""
    try:
        return await connect(
            target.url,
            additional_headers=target.headers,
            max_size=None,
            compression=None,
            open_timeout=30,
            user_agent_header="visiona-forward",
        )
    except InvalidStatus as err:
        response = err.response
        try:
            error = json.loads(response.body or b"")["error"]
            message = f"{error['message']} ({error['code']}, HTTP {response.status_code})"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status_code}"
        if response.status_code == 401:
            message += "; run `visiona login`"
        raise ClientError(message) from None
    except (OSError, TimeoutError, InvalidHandshake) as err:
        raise ClientError(f"cannot reach {target.server}: {err or type(err).__name__}") from None


class _Sink:
    """Where bytes from the device go: a socket's writer or standard output (a pipe or a
    socket)."""

    def __init__(self, writer: asyncio.StreamWriter, *, is_socket: bool) -> None:
        self.writer = writer
        self.is_socket = is_socket

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def write_eof(self) -> None:
        transport = self.writer.transport
        if self.is_socket:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                return
        if self.writer.can_write_eof():
            self.writer.write_eof()
        else:
            self.writer.close()


class _FileSink:
    """Standard output redirected to a regular file (no pipe transport for those)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self.file.write, data)

    def write_eof(self) -> None:
        self.file.flush()


Source = Callable[[], Awaitable[bytes]]


async def relay(ws: ClientConnection, read: Source, sink: _Sink | _FileSink) -> str | None:
    """Copy ``read()`` → WebSocket and WebSocket → ``sink`` with half-close, until the server
    closes. None when it ended normally (1000), else what ended it, in words."""

    async def up() -> None:
        with contextlib.suppress(ConnectionClosed):
            while chunk := await read():
                await ws.send(chunk)
            await ws.send(b"")  # our half-close

    sender = asyncio.get_running_loop().create_task(up())
    try:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                if isinstance(message, str):
                    continue
                if not message:
                    sink.write_eof()
                    continue
                await sink.write(message)
    except OSError as err:  # the local side went away
        await ws.close()
        return f"the local connection broke ({err.strerror or type(err).__name__})"
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    rcvd = ws.protocol.close_rcvd
    if rcvd is not None and rcvd.code == 1000:
        return None
    return describe_close(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")


def _say(line: str) -> None:
    """One line on stderr (stdout may be the forwarded connection itself)."""
    print(f"visiona forward: {line}", file=sys.stderr, flush=True)  # noqa: T201 - the CLI's own output


def _fd_is_socket(fd: int) -> bool:
    return stat.S_ISSOCK(os.fstat(fd).st_mode)


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


async def run_stdio(target: Target) -> int:
    """Carry standard input and output over one forward; the exit code.

    Pipes, sockets and terminals go through asyncio's pipe transports; a regular file
    (``< request.bin``, ``> answer.bin``) is read or written in a worker thread.
    """
    loop = asyncio.get_running_loop()
    ws = await open_forward(target)
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    # dup: asyncio closes the file objects it is given; keep fds 0 and 1 intact
    in_file = os.fdopen(os.dup(in_fd), "rb", buffering=0)
    out_file = os.fdopen(os.dup(out_fd), "wb", buffering=0)
    read: Source
    if _is_regular(in_fd):
        read = functools.partial(asyncio.to_thread, in_file.read, _READ_SIZE)
    else:
        reader = asyncio.StreamReader(limit=2 * _READ_SIZE)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), in_file)
        read = functools.partial(reader.read, _READ_SIZE)
    transport: asyncio.BaseTransport | None = None
    sink: _Sink | _FileSink
    if _is_regular(out_fd):
        sink = _FileSink(out_file)
    else:
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, out_file
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        sink = _Sink(writer, is_socket=_fd_is_socket(out_fd))
    try:
        ended = await relay(ws, read, sink)
    finally:
        await ws.close()
        if transport is not None:
            transport.close()
        else:
            out_file.close()
        if _is_regular(in_fd):
            in_file.close()
    if ended is not None:
        _say(ended)
        return 1
    return 0


async def run_listener(target: Target, address: str, port: int, stop: asyncio.Event) -> int:
    """Listen on ``address:port`` until ``stop``; one forward per accepted connection."""
    connections: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        who = f"{peer[0]}:{peer[1]}" if peer else "a client"
        try:
            ws = await open_forward(target)
        except ClientError as err:
            _say(f"{who}: {err}")
            writer.close()
            return
        try:
            read = functools.partial(reader.read, _READ_SIZE)
            ended = await relay(ws, read, _Sink(writer, is_socket=True))
        except asyncio.CancelledError:
            await ws.close()
            raise
        finally:
            writer.close()
        if ended is not None:
            _say(f"connection from {who} ended: {ended}")

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(serve(reader, writer))
        connections.add(task)
        task.add_done_callback(connections.discard)

    try:
        server = await asyncio.start_server(accepted, address, port)
    except OSError as err:
        raise ClientError(f"cannot listen on {address}:{port}: {err.strerror or err}") from None
    bound = server.sockets[0].getsockname()
    _say(f"{bound[0]}:{bound[1]} → device {target.device_id} port {target.port}; Ctrl-C to stop")
    try:
        await stop.wait()
    finally:
        server.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()
    _say("stopped")
    return 0


def run(target: Target, *, stdio: bool, address: str = "127.0.0.1", port: int = 0) -> int:
    """Run the forward until it ends (``--stdio``) or until Ctrl-C / SIGTERM (listener)."""

    async def main() -> int:
        if stdio:
            return await run_stdio(target)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await run_listener(target, address, port, stop)

    return asyncio.run(main())


def is_uuid(text: str) -> bool:
    """Whether ``text`` is a whole device id (no lookup needed)."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
