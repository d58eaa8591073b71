"""Small helpers for the devices API tests: pairing tokens, pairing, direct SQL."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from tests.support.api import User
from visiona.kit.runtime import Runtime
from visiona.kit.schema import pairing_tokens, session_tokens

API = "/api/v1"


def serial() -> str:
    """A serial number no other test uses."""
    return f"SN-{uuid.uuid4().hex[:12]}"


async def pairing_token(client: httpx.AsyncClient, user: User, **body: Any) -> dict[str, Any]:
    """Create a pairing token for ``user``; the 201 body."""
    response = await client.post(f"{API}/pairing-tokens", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def pair(
    client: httpx.AsyncClient, token: str, serial_number: str | None = None, name: str = "Dongle"
) -> httpx.Response:
    """Call the agent's pair exchange."""
    return await client.post(
        f"{API}/agent/pair",
        json={
            "pairing_token": token,
            "serial_number": serial_number or serial(),
            "device_type": "kl520",
            "name": name,
        },
    )


async def paired_device(
    client: httpx.AsyncClient, user: User, serial_number: str | None = None
) -> dict[str, Any]:
    """Pair a new device for ``user``: the pair response plus the pairing token's id."""
    token = await pairing_token(client, user)
    response = await pair(client, token["token"], serial_number)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    body["pairing_token_id"] = token["id"]
    return body


async def create_device(
    client: httpx.AsyncClient, user: User, serial_number: str | None = None, name: str = "Dev"
) -> dict[str, Any]:
    """Register a device by hand for ``user``."""
    response = await client.post(
        f"{API}/devices",
        json={"name": name, "serial_number": serial_number or serial(), "device_type": "kl720"},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def runtime(app: FastAPI) -> Runtime:
    """The running application's runtime."""
    rt: Runtime = app.state.runtime
    return rt


async def set_pairing_expiry(app: FastAPI, token_id: str, when: datetime) -> None:
    """Move a pairing token's expiry (to make it expired without waiting)."""
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            update(pairing_tokens)
            .where(pairing_tokens.c.public_id == uuid.UUID(token_id))
            .values(expires_at=when)
        )


async def set_session_expiry(app: FastAPI, token_hash: str, when: datetime) -> None:
    """Move a session token's expiry."""
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            update(session_tokens)
            .where(session_tokens.c.token_hash == token_hash)
            .values(expires_at=when)
        )


def bearer(token: str) -> dict[str, str]:
    """``Authorization: Bearer`` headers for ``token``."""
    return {"Authorization": f"Bearer {token}"}
