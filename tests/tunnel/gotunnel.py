"""Build the Go tunnel peer (``tests/interop/go/src/tunnelpeer``) like the yamux peer.

GOPATH mode against Debian's hashicorp/yamux and gorilla/websocket; the binary goes
to ``tests/interop/bin/tunnelpeer`` (gitignored with the rest of that directory).
"""

from __future__ import annotations

from pathlib import Path

from tests.interop.gopeer import build_go_program


def build_tunnel_peer() -> Path:
    """Build (incrementally: a shared GOCACHE) and return the Go tunnel peer."""
    return build_go_program("tunnelpeer")
