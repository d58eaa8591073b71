"""What the agent, the command line and the server share on the wire: one leaf module.

Close codes, reserved paths, header names, the API prefix, the status values a
device can be in and the chips a model targets. It imports nothing from
:mod:`visiona`, so the agent and the command line can use it without importing any
server code (``tests/agent/test_imports.py`` keeps it so).
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

# -- paths the agent answers itself (never forwarded to the local service) ----------
#: Every target under this prefix belongs to the agent; the proxy refuses them (403).
RESERVED_PREFIX: Final = "/visiona/"
#: ``PUT /visiona/models/{model_id}``: a model deployment.
MODELS_PATH: Final = "/visiona/models/"

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
    """Kneron chips a ``.nef`` model can be compiled for (the API's ``target_chip``)."""

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
