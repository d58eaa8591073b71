"""WebSocket upgrades refused before the application runs: the tunnels' pacing gate.

In a connect storm most upgrades are refused (503 + ``Retry-After``). Refused from the
route, each refusal paid for the ASGI scope, the middleware edge, FastAPI's routing and
a WebSocket denial response — about as much CPU as a tunnel that came up, on the node
that is already too busy. A feature registers a gate per upgrade path
(:data:`visiona.kit.deps.UPGRADE_GATES`); ``visiona serve``'s HTTP protocol
(:class:`visiona.kit.serve.LimitedHttpToolsProtocol`) asks it as soon as the upgrade's
head is parsed and writes the refusal itself, or lets the upgrade through marked as
admitted (:func:`was_admitted`), so the route does not ask the gate again.

The mark is a private header carrying a value random to this process, stripped from
whatever a client sent: it cannot be forged from outside. Servers without the gate (a
test client, another ASGI server) never mark, and the route asks the gate itself.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from email.utils import formatdate

from visiona.kit.errors import AppError

#: A path's gate: the refusal (an error with its status and headers), or None to admit.
UpgradeGate = Callable[[], AppError | None]

#: The header an admitted upgrade carries to its route (lower case, as in ASGI scopes).
ADMITTED_HEADER = b"x-visiona-upgrade-admitted"
_ADMITTED_VALUE = secrets.token_hex(16).encode("ascii")

_REASONS = {429: "Too Many Requests", 503: "Service Unavailable"}


def strip_mark(headers: list[tuple[bytes, bytes]]) -> None:
    """Remove any admission mark from ``headers`` (a client's is never trusted), in place."""
    if any(name == ADMITTED_HEADER for name, _ in headers):
        headers[:] = [(name, value) for name, value in headers if name != ADMITTED_HEADER]


def mark_admitted(headers: list[tuple[bytes, bytes]]) -> None:
    """Mark the upgrade whose ``headers`` these are as admitted by its gate, in place."""
    headers.append((ADMITTED_HEADER, _ADMITTED_VALUE))


def was_admitted(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the upgrade was admitted by its gate before the application ran."""
    return any(
        name == ADMITTED_HEADER and secrets.compare_digest(value, _ADMITTED_VALUE)
        for name, value in headers
    )


def refusal_bytes(err: AppError) -> bytes:
    """``err`` as a whole HTTP/1.1 response that closes the connection (JSON error body)."""
    body = json.dumps(err.body()).encode()
    lines = [
        f"HTTP/1.1 {err.status_code} {_REASONS.get(err.status_code, 'Error')}",
        f"date: {formatdate(usegmt=True)}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    lines += [f"{name.lower()}: {value}" for name, value in (err.headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
