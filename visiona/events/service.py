"""Use cases of the event stream: which events a stream shows, and one stream's items.

A stream is an organisation's committed audit events, in the shape of one item of
``GET /audit-events``. It subscribes to the node's hub first, then (resuming) replays
from the database what its client missed after ``Last-Event-ID``, then goes on live:
an event both replayed and received live is sent once. A resume id that is unknown,
of another organisation, older than the resume window, or followed by more than
:data:`MAX_REPLAY` events is answered with a ``reset`` (the client reloads its state).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from visiona.audit.catalogue import ACTIONS
from visiona.audit.repository import AuditEvent
from visiona.events import repository
from visiona.kit.clock import utcnow
from visiona.kit.errors import ValidationFailedError

if TYPE_CHECKING:
    from visiona.events.hub import EventHub, Subscription
    from visiona.kit.database import Database

#: The most events a resume replays; more → ``reset``.
MAX_REPLAY = 1000
#: Query parameter name of the type filter (for error messages).
TYPE_PARAM = "type"


@dataclass(frozen=True, slots=True)
class TypeFilter:
    """Which actions a stream shows: exact names and families (``tunnel.*``); empty: all."""

    exact: frozenset[str] = frozenset()
    families: tuple[str, ...] = ()

    @classmethod
    def parse(cls, values: Iterable[str]) -> TypeFilter:
        """``device.renamed``, ``tunnel.*`` (or ``tunnel``), ``*``; anything naming no
        action of the catalogue → 422."""
        exact: set[str] = set()
        families: list[str] = []
        for raw in values:
            value = raw.strip()
            if value in ("*", ""):
                return cls()
            if value in ACTIONS:
                exact.add(value)
                continue
            family = value.removesuffix(".*")
            prefix = f"{family}."
            if "*" in family or not any(name.startswith(prefix) for name in ACTIONS):
                raise ValidationFailedError(
                    [
                        {
                            "loc": ["query", TYPE_PARAM],
                            "message": f"{raw!r} names no event type: give an action "
                            "(device.renamed) or a family (tunnel.*)",
                            "type": "value_error",
                        }
                    ]
                )
            families.append(prefix)
        return cls(frozenset(exact), tuple(families))

    def matches(self, action: str) -> bool:
        """Whether the stream shows ``action``."""
        if not self.exact and not self.families:
            return True
        return action in self.exact or action.startswith(self.families)


@dataclass(frozen=True, slots=True)
class Reset:
    """The resume point is not known (or too old): the client reloads its state."""

    reason: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Nothing happened for a keep-alive interval."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The stream is subscribed (and its replay read): the response may start."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The stream ends: ``slow`` (its client could not keep up) or ``shutdown``."""

    reason: str


def parse_event_id(raw: str | None) -> uuid.UUID | str | None:
    """The resume id (None: not resuming; a string: not an id of ours → reset)."""
    if raw is None or not raw.strip():
        return None
    try:
        return uuid.UUID(raw.strip())
    except ValueError:
        return raw


async def replay(
    db: Database, org_id: uuid.UUID, last_id: uuid.UUID | str, window: float
) -> list[AuditEvent] | Reset:
    """``org_id``'s events after ``last_id``, oldest first, or a :class:`Reset`."""
    if not isinstance(last_id, uuid.UUID):
        return Reset("unknown_id")
    async with db.reading() as conn:
        key = await repository.key_of(conn, org_id, last_id)
        if key is None:
            return Reset("unknown_id")
        if key[0] < utcnow() - timedelta(seconds=window):
            return Reset("too_old")
        events = await repository.org_events_after(conn, org_id, key, MAX_REPLAY + 1)
    if len(events) > MAX_REPLAY:
        return Reset("too_many")
    return events


async def stream(
    hub: EventHub,
    db: Database,
    org_id: uuid.UUID,
    types: TypeFilter,
    *,
    last_id: uuid.UUID | str | None,
    resume_window: float,
    keepalive: float,
    lifetime: float | None = None,
) -> AsyncGenerator[AuditEvent | Ready | Reset | KeepAlive | Closed, None]:
    """One stream's items: :class:`Ready` once subscribed and the replay is read (an
    error before it is the request's: 503), then the replay (resuming), live events,
    keep-alives while idle, and :class:`Closed` when the hub ends it or after
    ``lifetime`` seconds (None: never)."""
    loop = asyncio.get_running_loop()
    deadline = None if lifetime is None else loop.time() + lifetime
    subscription = await hub.subscribe(org_id)
    try:
        found = None if last_id is None else await replay(db, org_id, last_id, resume_window)
        yield Ready()
        replayed: set[uuid.UUID] = set()
        if isinstance(found, Reset):
            yield found
        elif found is not None:
            replayed.update(event.id for event in found)
            for event in found:
                if types.matches(event.action):
                    yield event
        async for item in _live(subscription, replayed, keepalive, deadline):
            if not isinstance(item, AuditEvent) or types.matches(item.action):
                yield item
    finally:
        hub.unsubscribe(subscription)


async def _live(
    subscription: Subscription,
    replayed: set[uuid.UUID],
    keepalive: float,
    deadline: float | None,
) -> AsyncIterator[AuditEvent | KeepAlive | Closed]:
    """Live events (those already replayed skipped), keep-alives, then :class:`Closed`."""
    loop = asyncio.get_running_loop()
    while True:
        wait = keepalive
        if deadline is not None:
            wait = min(wait, deadline - loop.time())
            if wait <= 0:
                yield Closed("lifetime")
                return
        event = await subscription.next(wait)
        if event is None:
            if subscription.closed is not None:
                yield Closed(subscription.closed)
                return
            if deadline is None or loop.time() < deadline:
                yield KeepAlive()
        elif event.id in replayed:
            replayed.discard(event.id)  # sent once; the tail never sends it again
        else:
            yield event
