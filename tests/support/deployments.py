"""Helpers for deployment tests: a device with its model, and a fake agent's model receiver."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
from sqlalchemy import update

from tests.support.api import User
from tests.support.models import nef, uploaded
from tests.support.tunnel import paired_agent_token
from visiona.kit.runtime import Runtime
from visiona.kit.schema import models
from visiona.yamux import Stream

API = "/api/v1"


async def deploy(
    http: httpx.AsyncClient, user: User, device_id: str, model_id: str
) -> httpx.Response:
    """``POST /devices/{id}/deployments``."""
    return await http.post(
        f"{API}/devices/{device_id}/deployments", json={"model_id": model_id}, headers=user.headers
    )


async def deployments_of(http: httpx.AsyncClient, user: User, device_id: str) -> list[Any]:
    """Every deployment of the device (one page of 200)."""
    response = await http.get(
        f"{API}/devices/{device_id}/deployments", params={"limit": 200}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


async def device_and_model(
    http: httpx.AsyncClient, user: User, size: int = 100_000, chip: str = "kl520"
) -> tuple[str, str, str, bytes]:
    """A paired kl520 device and an uploaded model: ``(device_id, token, model_id, content)``."""
    device_id, token = await paired_agent_token(http, user)
    content = nef(size, seed=size)
    model = await uploaded(http, user, content, chip=chip)
    return device_id, token, str(model["id"]), content


async def set_model_sha(runtime: Runtime, model_id: str, sha256: str) -> None:
    """Overwrite a model's recorded sha256 (to make the agent refuse the file)."""
    async with runtime.db.transaction() as conn:
        await conn.execute(
            update(models).where(models.c.id == uuid.UUID(model_id)).values(sha256=sha256)
        )


@dataclass
class Received:
    """What a fake agent's receiver saw."""

    target: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)

    @property
    def sha256(self) -> str:
        """The sha256 of the received body."""
        return hashlib.sha256(self.body).hexdigest()


async def read_request(
    stream: Stream, received: Received, *, body_limit: int | None = None
) -> None:
    """Parse one request from ``stream`` with h11 into ``received`` (up to ``body_limit`` bytes)."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.read(1 << 20))
        elif isinstance(event, h11.Request):
            received.target = event.target.decode()
            received.headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            received.body += event.data
            if body_limit is not None and len(received.body) >= body_limit:
                return
        elif isinstance(event, h11.EndOfMessage):
            return


def answer(stream: Stream, status: int, body: bytes) -> None:
    """Write a minimal HTTP/1.1 response and half-close."""
    stream.write(
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (status, len(body), body)
    )
    stream.write_eof()
