"""``visiona events``: the organisation's events, recent or followed live.

Following reads ``GET /events`` (Server-Sent Events) and reconnects by itself when the
connection drops or the server restarts, resuming after the last event it printed
(``Last-Event-ID``): nothing missed within the server's resume window, nothing printed
twice. A ``reset`` from the server (a gap it cannot replay) is said on stderr.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from visiona.client.errors import ClientError

if TYPE_CHECKING:
    from visiona.client.http import ApiClient

_LOGGER = logging.getLogger(__name__)
#: Seconds between two reconnections at first (the server's ``retry:`` hint wins), and
#: at most after repeated failures.
FIRST_DELAY = 1.0
MAX_DELAY = 30.0

Echo = Callable[[str], None]


def matches(action: str, types: list[str]) -> bool:
    """Whether ``action`` is one of ``types`` (exact names, or families ``tunnel.*``)."""
    if not types:
        return True
    for wanted in types:
        family = wanted.removesuffix(".*")
        if wanted in ("*", action) or action.startswith(f"{family}."):
            return True
    return False


def line(item: dict[str, Any]) -> str:
    """One event as one line: time, action, who, target and detail."""
    when = str(item.get("occurred_at", ""))[:19].replace("T", " ")
    actor = item.get("actor_email") or item.get("actor_name") or item.get("actor_type", "")
    target = f"{item.get('target_type', '')} {str(item.get('target_id') or '')[:8]}".strip()
    detail = " ".join(f"{k}={v}" for k, v in (item.get("detail") or {}).items())
    return "  ".join(
        part for part in (when, str(item.get("action", "")), actor, target, detail) if part
    )


def render(item: dict[str, Any], *, as_json: bool) -> str:
    """``item`` as a JSON line or a text line."""
    return json.dumps(item) if as_json else line(item)


def follow(
    api: ApiClient,
    types: list[str],
    *,
    as_json: bool,
    echo: Echo,
    warn: Echo,
    max_events: int | None = None,
) -> int:
    """Print the events as they come, reconnecting with ``Last-Event-ID`` on a drop;
    return after ``max_events`` events (None: until interrupted). A refusal (401, 403,
    404, 422) is a :class:`ClientError`; an unreachable server is retried."""
    last_id: str | None = None
    delay = FIRST_DELAY
    hint = FIRST_DELAY
    printed = 0
    while True:
        try:
            with api.event_stream(types, last_id) as events:
                delay = hint
                for event in events:
                    if event.retry is not None:
                        hint = delay = event.retry / 1000
                    if event.event == "reset":
                        warn("events may have been missed (the server could not resume)")
                        continue
                    if not event.event or event.id is None:
                        continue
                    last_id = event.id
                    echo(render(json.loads(event.data), as_json=as_json))
                    printed += 1
                    if max_events is not None and printed >= max_events:
                        return printed
        except ClientError as err:
            if not _retryable(str(err)):
                raise
            warn(f"{err}; reconnecting in {delay:.0f}s")
        except httpx.TransportError as err:
            warn(f"the event stream broke off ({type(err).__name__}); reconnecting")
        time.sleep(delay)
        delay = min(MAX_DELAY, max(delay, FIRST_DELAY) * 2)


def _retryable(message: str) -> bool:
    """Whether a :class:`ClientError` is worth another try (unreachable, 5xx, 429)."""
    refused = ("HTTP 4",)
    return not message.startswith("--server") and (
        "HTTP 429" in message or not any(code in message for code in refused)
    )
