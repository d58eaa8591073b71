"""HTTP route of the live event stream: ``GET /events`` (Server-Sent Events).

The organisation's committed audit events as they happen, each in the shape of one
item of ``GET /audit-events``. Authentication as every API route (a bearer session
token, an API key, or the console's session cookie); ``read`` in the organisation acted
in: the ``X-Visiona-Org`` header, else ``?org=`` (a browser's ``EventSource`` cannot
send headers), else the personal one. See docs/api-spec.md, "Events (SSE)".
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request

from visiona.audit.schemas import AuditEventOut
from visiona.auth.dependencies import Principal, current_principal
from visiona.events import service
from visiona.events.dependencies import EventsDep
from visiona.events.service import Closed, KeepAlive, Reset, TypeFilter
from visiona.events.sse import EventStreamResponse, comment, frame, retry
from visiona.kit.deps import DatabaseDep, SettingsDep
from visiona.kit.errors import (
    AppError,
    NotFoundError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationFailedError,
)
from visiona.kit.http import error_responses
from visiona.orgs.permissions import Permission

router = APIRouter(tags=["events"])

#: The reconnection delay suggested to clients (``retry:``), in milliseconds.
RETRY_MS = 3000
#: Seconds between two checks that an open stream's caller may still read it.
RECHECK_EVERY = 60.0


async def _reader(
    request: Request,
    org: Annotated[
        uuid.UUID | None,
        Query(
            description="The organisation to act in when no `X-Visiona-Org` header can be "
            "sent (a browser's `EventSource`); the header wins."
        ),
    ] = None,
) -> Principal:
    principal = await current_principal(request, org)
    principal.require(Permission.READ)
    return principal


_reader.visiona_permission = Permission.READ  # type: ignore[attr-defined]  # read by the docs
Reader = Annotated[Principal, Depends(_reader)]


async def _frames(
    items: AsyncGenerator[object, None], still_allowed: Callable[[], Awaitable[bool]]
) -> AsyncIterator[bytes]:
    try:
        yield retry(RETRY_MS)
        async for item in items:
            if isinstance(item, KeepAlive):
                if not await still_allowed():
                    return  # signed out, removed from the organisation, key revoked
                yield comment("keep-alive")
            elif isinstance(item, Reset):
                yield frame(json.dumps({"reason": item.reason}), event="reset")
            elif isinstance(item, Closed):
                return
            else:
                out = AuditEventOut.model_validate(item)
                yield frame(out.model_dump_json(), event=out.action, event_id=str(out.id))
    finally:
        await items.aclose()  # unsubscribes at once (the client left, or the server stops)


@router.get(
    "/events",
    status_code=200,
    summary="Live events (Server-Sent Events)",
    response_class=EventStreamResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "`text/event-stream`: per event `id:` (the audit event's id), "
            "`event:` (its action) and `data:` (one item of `GET /audit-events` as JSON); "
            "`event: reset` when a resume is not possible; a `: keep-alive` comment while "
            "idle.",
        },
        **error_responses(
            UnauthorizedError, NotFoundError, ValidationFailedError, ServiceUnavailableError
        ),
    },
)
async def stream_events(
    *,
    request: Request,
    principal: Reader,
    hub: EventsDep,
    db: DatabaseDep,
    settings: SettingsDep,
    type_: Annotated[
        list[str] | None,
        Query(
            alias="type",
            max_length=50,
            description="Only these event types (repeatable): an action (`device.renamed`) "
            "or a family (`tunnel.*`). Default: every event.",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Resume after this event (as the `Last-Event-ID` header; the header wins).",
        ),
    ] = None,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", include_in_schema=False)
    ] = None,
    lifetime: Annotated[
        float | None,
        Query(
            alias="timeout",
            gt=0,
            le=86400,
            description="End the stream after this many seconds (default: never; clients "
            "reconnect with `Last-Event-ID`).",
        ),
    ] = None,
) -> EventStreamResponse:
    """The organisation's events as they are committed, cluster-wide, in
    ``text/event-stream``. ``Last-Event-ID`` resumes: the events after it are replayed
    when it is at most ``VISIONA_EVENTS_RESUME_WINDOW`` seconds old, else one
    ``event: reset`` comes first (reload what you show), then the stream goes on live."""
    types = TypeFilter.parse(type_ or [])
    items = service.stream(
        hub,
        db,
        principal.org_id,
        types,
        last_id=service.parse_event_id(last_event_id_header or last_event_id),
        resume_window=settings.events_resume_window,
        keepalive=settings.events_keepalive,
        lifetime=lifetime,
    )
    await anext(items)  # subscribed and replay read: failures are still an HTTP error
    return EventStreamResponse(_frames(items, _recheck(request, principal)))


def _recheck(request: Request, principal: Principal) -> Callable[[], Awaitable[bool]]:
    """Whether the caller may still read the stream, asked again at most every
    :data:`RECHECK_EVERY` seconds (at a keep-alive): a session signed out or expired, a
    membership ended or a key revoked ends an open stream within that time."""
    loop = asyncio.get_running_loop()
    checked = [loop.time()]

    async def still_allowed() -> bool:
        if loop.time() - checked[0] < RECHECK_EVERY:
            return True
        checked[0] = loop.time()
        try:
            again = await _reader(request, principal.org_id)
        except AppError:
            return False
        return again.org_id == principal.org_id

    return still_allowed
