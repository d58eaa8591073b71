"""Presentation helpers of the console: labels, times, filters and the template engine.

They read the features' typed records (:class:`~visiona.devices.repository.Device`,
:class:`~visiona.tokens.repository.PairingToken`, ...); ``Any`` appears only where
Jinja's context takes whatever a page passes.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

from visiona.audit.catalogue import ACTIONS
from visiona.kit.pagination import MAX_LIMIT, Page, PageRequest

if TYPE_CHECKING:
    from jinja2 import Environment

    from visiona.apikeys.repository import ApiKey
    from visiona.audit.repository import AuditEvent
    from visiona.deployments.repository import Deployment
    from visiona.devices.repository import Device
    from visiona.tokens.repository import PairingToken, SessionToken
    from visiona.webhooks.repository import Endpoint

#: at most this many rows are read for one console list (devices, tokens)
MAX_ROWS = 2000
STATUS_FILTERS = ("all", "online", "offline")
T = TypeVar("T")


class _Created(Protocol):
    @property
    def created_at(self) -> datetime: ...


C = TypeVar("C", bound=_Created)


@dataclass(frozen=True)
class Badge:
    """A status shown as a coloured badge: its text and its CSS kind."""

    label: str
    kind: str


def tunnel_badge(device: Device) -> Badge:
    """The device's tunnel status as the console shows it."""
    status = device.remote_status
    if status == "online":
        return Badge("Online", "online")
    if status == "reconnecting":
        return Badge("Reconnecting", "reconnecting")
    if device.last_connected_at is None:
        return Badge("Never connected", "never")
    return Badge("Offline", "offline")


def busy_badge(device: Device) -> Badge:
    """Whether the agent reports the device's local service busy."""
    if device.busy:
        return Badge("Busy", "reconnecting")
    return Badge("Idle", "online")


@dataclass(frozen=True)
class ForwardCommand:
    """A command to copy that reaches one port the device's agent allows."""

    port: int
    command: str


def forward_commands(device: Device) -> list[ForwardCommand]:
    """The commands reaching the ports the device's agent allows (``visiona forward``):
    ``ssh`` through ``--stdio`` for port 22, a local listener for every port (on the same
    number, or 10000 + it below 1024, which needs no privilege)."""
    ports = device.tcp_ports or []
    device_id = device.id
    commands: list[ForwardCommand] = []
    for port in ports:
        if port == 22:
            commands.append(
                ForwardCommand(
                    port, f"ssh -o ProxyCommand='visiona forward --stdio %h 22' USER@{device_id}"
                )
            )
        local = port if port >= 1024 else 10000 + port
        commands.append(ForwardCommand(port, f"visiona forward {device_id} {local}:{port}"))
    return commands


def usb_label(device: Device) -> str:
    """The dongle's USB status as the console shows it."""
    return {"online": "Connected", "offline": "Disconnected"}.get(str(device.status), "Unknown")


def pairing_state(token: PairingToken, now: datetime | None = None) -> Badge:
    """Unused, used, expired or revoked."""
    if token.revoked_at is not None:
        return Badge("Revoked", "offline")
    if token.used_at is not None:
        return Badge("Used", "online")
    if token.expires_at is not None and _aware(token.expires_at) <= (now or datetime.now(UTC)):
        return Badge("Expired", "offline")
    return Badge("Unused", "reconnecting")


def session_state(token: SessionToken, now: datetime | None = None) -> Badge:
    """Active, expired or revoked."""
    if token.revoked_at is not None:
        return Badge("Revoked", "offline")
    if token.expires_at is not None and _aware(token.expires_at) <= (now or datetime.now(UTC)):
        return Badge("Expired", "offline")
    return Badge("Active", "online")


def api_key_state(key: ApiKey, now: datetime | None = None) -> Badge:
    """Active, expired or revoked."""
    if key.revoked_at is not None:
        return Badge("Revoked", "offline")
    if _aware(key.expires_at) <= (now or datetime.now(UTC)):
        return Badge("Expired", "offline")
    return Badge("Active", "online")


#: What each API key scope lets a key do, in the words of the API keys page (the
#: order of :data:`visiona.apikeys.service.SCOPES`).
SCOPE_HINTS: dict[str, str] = {
    "read": "read devices, models, deployments, rollouts and the audit trail",
    "devices:write": "pairing tokens; register, rename and unpair devices",
    "models:write": "upload, edit, delete and download models",
    "deploy": "deploy models to devices; run rollouts",
    "proxy": "HTTP proxy and TCP forwards to devices",
    "admin": "everything an admin can do, members and keys included",
}


#: The states of a webhook delivery, as the delivery log filters them.
DELIVERY_STATES = ("pending", "delivered", "failed")
_DELIVERY_KINDS = {"pending": "reconnecting", "delivered": "online", "failed": "error"}


def _families() -> tuple[tuple[str, str], ...]:
    heads = sorted({name.partition(".")[0] for name in ACTIONS})
    return (("*", "Everything"), *((f"{head}.*", head.replace("_", " ")) for head in heads))


#: The event families the webhooks page offers as check boxes: (type, label).
WEBHOOK_FAMILIES = _families()


def webhook_badge(endpoint: Endpoint) -> Badge:
    """Enabled, Failing (enabled, its last attempts failed) or Disabled."""
    if not endpoint.enabled:
        return Badge("Disabled", "error" if endpoint.failing_since else "offline")
    if endpoint.failing_since is not None:
        return Badge("Failing", "reconnecting")
    return Badge("Enabled", "online")


def delivery_badge(state: str) -> Badge:
    """A delivery's state: pending, delivered or failed."""
    return Badge(state.capitalize(), _DELIVERY_KINDS.get(state, "offline"))


def deployment_badge(deployment: Deployment) -> Badge:
    """A deployment's status."""
    status = str(deployment.status)
    if status == "stored":  # on the PC, but no deploy hook loaded it
        return Badge("Stored (no hook)", "offline")
    kind = {"succeeded": "online", "failed": "error"}.get(status, "reconnecting")
    return Badge(status.capitalize(), kind)


#: A rollout's state → its badge's kind (paused waits for someone: a warning).
_ROLLOUT_KINDS = {
    "running": "reconnecting",
    "paused": "reconnecting",
    "completed": "online",
    "cancelled": "offline",
    "failed": "error",
}
#: A device's state in a rollout → its badge's kind (waiting: offline, not an error).
_ROLLOUT_DEVICE_KINDS = {
    "queued": "never",
    "waiting": "offline",
    "transferring": "reconnecting",
    "succeeded": "online",
    "failed": "error",
    "skipped": "never",
    "cancelled": "offline",
}


def rollout_badge(state: str) -> Badge:
    """A rollout's state (running, paused, completed, cancelled, failed)."""
    return Badge(state.capitalize(), _ROLLOUT_KINDS.get(state, "offline"))


def rollout_device_badge(state: str) -> Badge:
    """A device's state in a rollout (queued, waiting, transferring, succeeded, ...)."""
    return Badge(state.capitalize(), _ROLLOUT_DEVICE_KINDS.get(state, "offline"))


def batch_label(batch: int | None) -> str:
    """Batch 0 is the canary, then batches 1, 2, ... (as the planner numbers them and the
    auto-abort reason names them); None: not in a batch yet."""
    if batch is None:
        return "Not yet"
    return "Canary" if batch == 0 else f"Batch {batch}"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime | None) -> str:
    """An ISO 8601 UTC timestamp for scripts (empty for None)."""
    return _aware(moment).astimezone(UTC).isoformat() if moment else ""


def exact(moment: datetime | None) -> str:
    """The exact time for people, in UTC."""
    return _aware(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


#: Sizes shown to people are decimal (SI), as in the CLI: 1 kB = 1000 bytes.
_SIZE_UNITS = ("kB", "MB", "GB", "TB")


def size(num_bytes: int | None) -> str:
    """A byte count for people in decimal units (kB, MB, GB), as the CLI shows it."""
    count = int(num_bytes or 0)
    if count < 1000:
        return "1 byte" if count == 1 else f"{count} bytes"
    value = float(count)
    for unit in _SIZE_UNITS:
        value /= 1000
        if value < 999.95 or unit == _SIZE_UNITS[-1]:
            return f"{value:.1f} {unit}"
    return f"{value:.1f} TB"  # pragma: no cover - the loop always returns


def matches(device: Device, status: str, query: str) -> bool:
    """Whether the device passes the status filter and the name/serial search."""
    if status == "online" and device.remote_status != "online":
        return False
    if status == "offline" and device.remote_status == "online":
        return False
    if not query:
        return True
    needle = query.casefold()
    return any(needle in (text or "").casefold() for text in (device.name, device.serial_number))


async def every_row(fetch: Callable[[PageRequest], Awaitable[Page[T]]]) -> list[T]:
    """All rows of a paged service call, up to :data:`MAX_ROWS`.

    ``fetch(page)`` is the service's list call for one :class:`PageRequest`.
    """
    rows: list[T] = []
    cursor: str | None = None
    while len(rows) < MAX_ROWS:
        page = await fetch(PageRequest(limit=MAX_LIMIT, cursor=cursor))
        rows.extend(page.items)
        cursor = page.next_cursor
        if not cursor:
            break
    return rows


def short_id(value: str | uuid.UUID | None, length: int = 12) -> str:
    """The first characters of an id or digest."""
    return str(value or "")[:length]


def event_summary(event: AuditEvent) -> str:
    """What an audit event means, in words (the catalogue's summary)."""
    known = ACTIONS.get(event.action)
    return known.summary.split(". ")[0].rstrip(".") if known else event.action


def event_actor(event: AuditEvent, user_id: uuid.UUID, device_names: Mapping[str, str]) -> str:
    """Who acted: "You", another member by name (or email), a device by name, or
    "visionA" for the server itself."""
    kind, actor = event.actor_type, event.actor_id
    if kind == "user":
        if actor is not None and actor == user_id:
            return "You"
        return event.actor_name or event.actor_email or "Someone"
    if kind == "device":
        return device_names.get(str(actor), f"Device {short_id(actor, 8)}")
    return "visionA"


#: The Activity filter's kinds of event (README, "The web console"): key, label, the
#: prefixes of the actions it covers.
CATEGORIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("sign-ins", "Sign-ins (failed ones too)", ("user.",)),
    ("pairings", "Pairings and devices", ("pairing_token.", "device.")),
    ("tokens", "Session tokens", ("session_token.",)),
    ("tunnels", "Tunnels and remote access", ("tunnel.", "proxy.")),
    ("models", "Models", ("model.",)),
    ("deployments", "Deployments", ("deployment.",)),
    ("rollouts", "Rollouts", ("rollout.",)),
    ("members", "Members and invitations", ("org.", "member.", "invitation.")),
)


def category_actions(key: str) -> tuple[str, ...] | None:
    """The actions of the category ``key`` (None when ``key`` is no category)."""
    for name, _label, prefixes in CATEGORIES:
        if name == key:
            return tuple(a for a in ACTIONS if a.startswith(prefixes))
    return None


#: A ``tunnel.conflict`` event this recent (seconds) is shown on the device page.
CONFLICT_SHOWN_FOR = 600.0


def recent_conflict(events: Iterable[AuditEvent], now: datetime | None = None) -> AuditEvent | None:
    """The newest ``tunnel.conflict`` event of the last 10 minutes, or None."""
    moment = now or datetime.now(UTC)
    for event in events:
        if event.action != "tunnel.conflict":
            continue
        occurred = event.occurred_at
        if (
            occurred is not None
            and (moment - _aware(occurred)).total_seconds() <= CONFLICT_SHOWN_FOR
        ):
            return event
        return None
    return None


#: How a closed tunnel's reason reads (exception names and close reasons from the hub).
_REASONS = {
    "SessionClosedError": "the connection was lost",
    "PingTimeoutError": "the agent stopped answering pings",
    "ProtocolError": "the agent broke the tunnel protocol",
    "ConnectionResetError": "the connection was reset",
    "closed by the agent": "the agent closed it",
}
_DETAIL_NAMES = {"session_token_id": "session token", "model_id": "model", "node": "server node"}


def event_detail(event: AuditEvent, model_names: Mapping[str, str] | None = None) -> str:
    """The detail fields in words: empty values left out, models by name, reasons readable."""
    parts = []
    for key, value in (event.detail or {}).items():
        if value is None or value in ("", "None", []):
            continue
        shown = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
        if key == "model_id":
            shown = (model_names or {}).get(shown) or f"(deleted model {short_id(shown, 8)})"
        elif key == "session_token_id":
            shown = short_id(shown, 8)
        elif key == "reason":
            shown = _REASONS.get(shown, shown)
        parts.append(f"{_DETAIL_NAMES.get(key, key.replace('_', ' '))}: {shown}")
    return "; ".join(parts)


def environment() -> Environment:
    """The console's Jinja2 environment: autoescaped templates from the package.

    Jinja2 is imported here, on the first page, not when the application is built.
    """
    from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: PLC0415 - lazy

    env = Environment(
        loader=PackageLoader("visiona.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(iso=iso, exact=exact, size=size, short=short_id)
    env.globals.update(
        tunnel_badge=tunnel_badge,
        busy_badge=busy_badge,
        forward_commands=forward_commands,
        usb_label=usb_label,
        pairing_state=pairing_state,
        session_state=session_state,
        api_key_state=api_key_state,
        webhook_badge=webhook_badge,
        delivery_badge=delivery_badge,
        deployment_badge=deployment_badge,
        rollout_badge=rollout_badge,
        rollout_device_badge=rollout_device_badge,
        batch_label=batch_label,
        event_summary=event_summary,
        event_actor=event_actor,
        event_detail=event_detail,
    )
    return env


def sorted_newest_first(rows: Iterable[C]) -> list[C]:
    """Rows by ``created_at``, newest first."""
    return sorted(rows, key=lambda row: _aware(row.created_at), reverse=True)
