"""A real webhook receiver for the delivery tests, and outbox rows written directly.

:class:`Receiver` is a Starlette app (served by uvicorn on 127.0.0.1, port 0) that
verifies every request's signature with the ``standardwebhooks`` library, as a
customer's receiver would, and answers as the test tells it (status, delay, body).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from visiona.kit.database import Database
from visiona.kit.schema import webhook_deliveries, webhook_endpoints, webhook_subscriptions


def new_secret() -> str:
    """A Standard Webhooks secret (``whsec_`` + base64 of 24 random bytes)."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass
class Received:
    """One request the receiver accepted (signature verified)."""

    path: str
    event_id: str
    body: bytes
    headers: dict[str, str]

    @property
    def payload(self) -> dict[str, Any]:
        """The JSON body."""
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


@dataclass
class Receiver:
    """Verifies every signature; answers ``status`` after ``delay`` seconds with ``answer``."""

    #: path → the secret of the endpoint posting there
    secrets: dict[str, str] = field(default_factory=dict)
    status: int = 200
    delay: float = 0.0
    answer: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    #: every request whose signature verified, answered or not (path, event id)
    attempts: list[tuple[str, str]] = field(default_factory=list)
    #: the requests answered 2xx, in arrival order
    log: list[Received] = field(default_factory=list)
    #: requests whose signature did not verify
    bad_signatures: int = 0

    def path(self) -> tuple[str, str]:
        """A new path and its secret (one per endpoint)."""
        path = f"/hook/{uuid.uuid4().hex[:8]}"
        self.secrets[path] = new_secret()
        return path, self.secrets[path]

    def ids(self, path: str) -> list[str]:
        """The event ids accepted on ``path``, in arrival order."""
        return [r.event_id for r in self.log if r.path == path]

    def _verified(self, path: str, body: bytes, headers: dict[str, str]) -> bool:
        secret = self.secrets.get(path)
        if secret is None:
            return False
        try:
            Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        if not self._verified(request.url.path, body, headers):
            self.bad_signatures += 1
            return Response(b"bad signature", status_code=401)
        event_id = headers["webhook-id"]
        self.attempts.append((request.url.path, event_id))
        if self.delay:
            await asyncio.sleep(self.delay)
        if 200 <= self.status < 300:
            self.log.append(Received(request.url.path, event_id, body, headers))
        return Response(self.answer, status_code=self.status, headers=self.headers)

    def app(self) -> Starlette:
        """The ASGI app (every POST under /hook)."""
        return Starlette(routes=[Route("/hook/{name}", self._hook, methods=["POST"])])


async def add_endpoint(
    db: Database,
    org_id: uuid.UUID,
    url: str,
    secret: str,
    events: tuple[str, ...] = ("*",),
) -> uuid.UUID:
    """An enabled endpoint of ``org_id`` subscribed to ``events``, written directly."""
    endpoint_id = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(
            insert(webhook_endpoints).values(
                id=endpoint_id,
                org_id=org_id,
                url=url,
                secret=secret,
                events=" ".join(sorted(events)),
                enabled=True,
            )
        )
        await conn.execute(
            insert(webhook_subscriptions),
            [{"endpoint_id": endpoint_id, "event_type": e} for e in events],
        )
    return endpoint_id


async def deliveries(db: Database, endpoint_id: uuid.UUID) -> list[Any]:
    """The endpoint's outbox rows, in order."""
    async with db.reading() as conn:
        found = await conn.execute(
            select(webhook_deliveries)
            .where(webhook_deliveries.c.endpoint_id == endpoint_id)
            .order_by(webhook_deliveries.c.seq)
        )
        return list(found.mappings())


async def endpoint(db: Database, endpoint_id: uuid.UUID) -> Any:
    """The endpoint's row."""
    async with db.reading() as conn:
        found = await conn.execute(
            select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
        )
        return found.mappings().one()
