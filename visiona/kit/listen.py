"""The server's listening socket, bound before anything logs that the server is ready.

uvicorn binds only after the application's start-up has run (and logged "ready"),
so a busy port used to fail after that line. Binding here first makes ``serve`` fail
with one line before any start-up work.
"""

from __future__ import annotations

import socket


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` has a colon); OSError if busy.

    ``reuse_port`` sets ``SO_REUSEPORT``: the workers of ``serve --workers`` each bind
    the same port and the kernel spreads new connections over their sockets.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock
