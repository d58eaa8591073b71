"""Helpers for API key tests: make a key, and headers that use it."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.api import User

API = "/api/v1"


async def create_key(
    client: httpx.AsyncClient,
    user: User,
    scopes: list[str],
    *,
    org_id: str | None = None,
    days: int = 30,
    name: str = "ci",
) -> dict[str, Any]:
    """A key made by ``user`` acting in ``org_id`` (default: personal): the 201 body."""
    headers = dict(user.headers)
    if org_id is not None:
        headers["X-Visiona-Org"] = org_id
    response = await client.post(
        f"{API}/api-keys",
        json={"name": name, "scopes": scopes, "expires_in_days": days},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def key_headers(key: str) -> dict[str, str]:
    """Bearer headers of an API key."""
    return {"Authorization": f"Bearer {key}"}
