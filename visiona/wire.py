"""What the agent and the server share on the wire: one leaf module both import.

Close codes, reserved paths, header names, the API prefix and the status values a
device can be in. It imports nothing from :mod:`visiona`, so the agent can use it
without importing any server code (``tests/agent/test_imports.py`` keeps it so).
See docs/tunnel-protocol.md for what each value means on the wire.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

#: Every HTTP route of the server lives under this prefix.
API_PREFIX: Final = "/api/v1"
#: The agent's WebSocket tunnel, under :data:`API_PREFIX`.
TUNNEL_PATH: Final = "/agent/tunnel"
#: The pair exchange and the USB status report, under :data:`API_PREFIX`.
PAIR_PATH: Final = "/agent/pair"
#: The agent's enrolment with a reusable enrollment key (``vek_…``), answered as a pair.
ENROLL_PATH: Final = "/agent/enroll"
ENROLLMENT_KEY_PREFIX: Final = "vek_"
STATUS_PATH: Final = "/agent/status"
#: The agent trades its session token for a new one before it expires.
RENEW_PATH: Final = "/agent/session/renew"

# -- WebSocket close codes the server sends on the tunnel ----------------------------
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED: Final = 1003
#: The device's credentials were revoked: the agent stops (the next upgrade gets 401).
CLOSE_REVOKED: Final = 4401
#: Keepalives went unanswered.
CLOSE_KEEPALIVE: Final = 4408
#: A newer tunnel of the same device replaced this one.
CLOSE_SUPERSEDED: Final = 4409
#: The reason of a 1001 close when the node stops; :func:`going_away_reason` adds the
#: reconnect hint (``server shutting down; reconnect in 2.7 s``).
SHUTDOWN_REASON: Final = "server shutting down"
_HINT_PREFIX: Final = "; reconnect in "


def going_away_reason(delay: float) -> str:
    """The close reason of a stopping node asking the agent to reconnect after ``delay`` s."""
    return f"{SHUTDOWN_REASON}{_HINT_PREFIX}{delay:.1f} s"


def reconnect_hint(code: int | None, reason: str) -> float | None:
    """The seconds a 1001 close's reason asks the agent to wait before reconnecting.

    None when the close carries no hint (another code, another reason, a bad number);
    the hint is bounded to 0-300 s.
    """
    if code != CLOSE_GOING_AWAY or _HINT_PREFIX not in reason:
        return None
    text = reason.rpartition(_HINT_PREFIX)[2].removesuffix(" s")
    try:
        delay = float(text)
    except ValueError:
        return None
    if delay != delay:  # NaN  # noqa: PLR0124 - the NaN test
        return None
    return min(300.0, max(0.0, delay))


# -- paths the agent answers itself (never forwarded to the local service) ----------
#: Every target under this prefix belongs to the agent; the proxy refuses them (403).
RESERVED_PREFIX: Final = "/visiona/"
#: ``PUT /visiona/models/{model_id}``: a model deployment.
MODELS_PATH: Final = "/visiona/models/"

#: ``GET /visiona/tcp/{port}`` with ``Upgrade: visiona-tcp``: a raw byte stream to
#: 127.0.0.1:{port} on the device's PC, if the agent allows the port.
TCP_PATH: Final = "/visiona/tcp/"
#: The ``Upgrade`` token of a TCP stream; the agent's ``101`` answer carries it back.
TCP_UPGRADE: Final = "visiona-tcp"
#: Header on every answer the agent gives itself instead of the local service; its
#: value says which rule refused: ``policy`` (an HTTP allow rule), ``port`` (a TCP port).
REFUSED_HEADER: Final = "X-Visiona-Refused"

# -- WebSocket close codes of a forwarded TCP connection (``/devices/{id}/tcp/{port}``) --
#: The agent refused the port (its ``--allow-port`` policy).
CLOSE_FORWARD_REFUSED: Final = 4403
#: The forward was idle or open for too long (the reason says which).
CLOSE_FORWARD_TIMEOUT: Final = 4408
#: The device cannot serve the forward: nothing listens on the port, or its agent
#: predates TCP forwarding, or its tunnel dropped (the reason says which).
CLOSE_FORWARD_UNREACHABLE: Final = 4502
#: The agent did not answer the stream's header in time.
CLOSE_FORWARD_AGENT_TIMEOUT: Final = 4504

# -- headers of a model deployment ---------------------------------------------------
SHA256_HEADER: Final = "X-Visiona-Sha256"
CHIP_HEADER: Final = "X-Visiona-Chip"

# -- status values -------------------------------------------------------------------
#: USB level, reported by the agent (``devices.status``).
UsbStatus = Literal["online", "offline", "unknown"]
USB_STATUSES: Final[tuple[UsbStatus, ...]] = ("online", "offline", "unknown")
#: Tunnel level, seen by the cloud (``devices.remote_status``).
RemoteStatus = Literal["online", "offline", "reconnecting", "error"]
REMOTE_STATUSES: Final[tuple[RemoteStatus, ...]] = ("online", "offline", "reconnecting", "error")


class TargetChip(StrEnum):
    """Kneron chips a ``.nef`` model can be compiled for (the server, the CLI client and
    the deploy header :data:`CHIP_HEADER` name them alike)."""

    KL520 = "kl520"
    KL530 = "kl530"
    KL630 = "kl630"
    KL720 = "kl720"
    KL730 = "kl730"

    @classmethod
    def _missing_(cls, value: object) -> TargetChip | None:
        """Case-insensitive: ``KL520`` is ``kl520`` on every route and in the CLI."""
        if isinstance(value, str):
            lowered = value.strip().lower()
            for chip in cls:
                if chip.value == lowered:
                    return chip
        return None
