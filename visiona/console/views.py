"""Presentation helpers of the console: labels, times, filters and the template engine.

Rows from the services may be mappings or objects; :func:`field` reads both, so
the console does not depend on how a repository shapes its rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from visiona.audit.catalogue import ACTIONS
from visiona.kit.pagination import MAX_LIMIT, PageRequest

if TYPE_CHECKING:
    from jinja2 import Environment

#: at most this many rows are read for one console list (devices, tokens)
MAX_ROWS = 2000
STATUS_FILTERS = ("all", "online", "offline")


def field(row: Any, name: str) -> Any:
    """``row[name]`` for a mapping, ``row.name`` for an object."""
    if isinstance(row, Mapping):
        return row.get(name)
    return getattr(row, name, None)


@dataclass(frozen=True)
class Badge:
    """A status shown as a coloured badge: its text and its CSS kind."""

    label: str
    kind: str


def tunnel_badge(device: Any) -> Badge:
    """The device's tunnel status as the console shows it."""
    status = field(device, "remote_status")
    if status == "online":
        return Badge("Online", "online")
    if status == "reconnecting":
        return Badge("Reconnecting", "reconnecting")
    if field(device, "last_connected_at") is None:
        return Badge("Never connected", "never")
    return Badge("Offline", "offline")


def busy_badge(device: Any) -> Badge:
    """Whether the agent reports the device's local service busy."""
    if field(device, "busy"):
        return Badge("Busy", "reconnecting")
    return Badge("Idle", "online")


@dataclass(frozen=True)
class ForwardCommand:
    """A command to copy that reaches one port the device's agent allows."""

    port: int
    command: str


def forward_commands(device: Any) -> list[ForwardCommand]:
    """The commands reaching the ports the device's agent allows (``visiona forward``):
    ``ssh`` through ``--stdio`` for port 22, a local listener for every port (on the same
    number, or 10000 + it below 1024, which needs no privilege)."""
    ports = field(device, "tcp_ports") or []
    device_id = field(device, "id")
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


def usb_label(device: Any) -> str:
    """The dongle's USB status as the console shows it."""
    return {"online": "Connected", "offline": "Disconnected"}.get(
        str(field(device, "status")), "Unknown"
    )


def pairing_state(token: Any, now: datetime | None = None) -> Badge:
    """Unused, used, expired or revoked."""
    if field(token, "revoked_at") is not None:
        return Badge("Revoked", "offline")
    if field(token, "used_at") is not None:
        return Badge("Used", "online")
    expires = field(token, "expires_at")
    if expires is not None and _aware(expires) <= (now or datetime.now(UTC)):
        return Badge("Expired", "offline")
    return Badge("Unused", "reconnecting")


def session_state(token: Any, now: datetime | None = None) -> Badge:
    """Active, expired or revoked."""
    if field(token, "revoked_at") is not None:
        return Badge("Revoked", "offline")
    expires = field(token, "expires_at")
    if expires is not None and _aware(expires) <= (now or datetime.now(UTC)):
        return Badge("Expired", "offline")
    return Badge("Active", "online")


def deployment_badge(deployment: Any) -> Badge:
    """A deployment's status."""
    status = str(field(deployment, "status"))
    kind = {"succeeded": "online", "failed": "error"}.get(status, "reconnecting")
    return Badge(status.capitalize(), kind)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime | None) -> str:
    """An ISO 8601 UTC timestamp for scripts (empty for None)."""
    return _aware(moment).astimezone(UTC).isoformat() if moment else ""


def exact(moment: datetime | None) -> str:
    """The exact time for people, in UTC."""
    return _aware(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def size(num_bytes: int | None) -> str:
    """A byte count for people (KiB, MiB, GiB)."""
    value = float(num_bytes or 0)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def matches(device: Any, status: str, query: str) -> bool:
    """Whether the device passes the status filter and the name/serial search."""
    if status == "online" and field(device, "remote_status") != "online":
        return False
    if status == "offline" and field(device, "remote_status") == "online":
        return False
    if not query:
        return True
    needle = query.casefold()
    return any(
        needle in str(field(device, key) or "").casefold() for key in ("name", "serial_number")
    )


PageFetch = Callable[[PageRequest], Awaitable[Any]]


async def every_row(fetch: PageFetch) -> list[Any]:
    """All rows of a paged service call, up to :data:`MAX_ROWS`.

    ``fetch(page)`` is the service's list call for one :class:`PageRequest`.
    """
    rows: list[Any] = []
    cursor: str | None = None
    while len(rows) < MAX_ROWS:
        page = await fetch(PageRequest(limit=MAX_LIMIT, cursor=cursor))
        rows.extend(field(page, "items"))
        cursor = field(page, "next_cursor")
        if not cursor:
            break
    return rows


def short_id(value: str | uuid.UUID | None, length: int = 12) -> str:
    """The first characters of an id or digest."""
    return str(value or "")[:length]


def event_summary(event: Any) -> str:
    """What an audit event means, in words (the catalogue's summary)."""
    action = str(field(event, "action") or "")
    known = ACTIONS.get(action)
    return known.summary.split(". ")[0].rstrip(".") if known else action


def event_actor(event: Any, user_id: Any, device_names: Mapping[str, str]) -> str:
    """Who acted: "You", a device by name, or "visionA" for the server itself."""
    kind, actor = field(event, "actor_type"), field(event, "actor_id")
    if kind == "user":
        return "You" if actor is not None and str(actor) == str(user_id) else "Someone"
    if kind == "device":
        return device_names.get(str(actor), f"Device {short_id(actor, 8)}")
    return "visionA"


def event_detail(event: Any) -> str:
    """The detail fields as ``name: value`` pairs (lists joined, ids shortened)."""
    parts = []
    for key, value in (field(event, "detail") or {}).items():
        shown = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
        parts.append(f"{key.replace('_', ' ')}: {shown if shown else '—'}")
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
        deployment_badge=deployment_badge,
        event_summary=event_summary,
        event_actor=event_actor,
        event_detail=event_detail,
    )
    return env


def sorted_newest_first(rows: Iterable[Any]) -> list[Any]:
    """Rows by ``created_at``, newest first."""
    return sorted(rows, key=lambda row: _aware(field(row, "created_at")), reverse=True)
