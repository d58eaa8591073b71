"""Small helpers for API tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

PASSWORD = "correct horse battery staple"


@dataclass
class User:
    """A registered, signed-in test user."""

    id: str
    email: str
    token: str
    #: their personal organisation (every request acts in it unless told otherwise)
    org_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        """Bearer authentication headers."""
        return {"Authorization": f"Bearer {self.token}"}


async def signup(client: httpx.AsyncClient, email: str | None = None) -> User:
    """Register a new user and sign in."""
    email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
    created = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "Test"}
    )
    assert created.status_code == 201, created.text
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    body: dict[str, Any] = login.json()
    user = User(id=body["user"]["id"], email=email, token=body["token"])
    orgs = await client.get("/api/v1/orgs", headers=user.headers)
    assert orgs.status_code == 200, orgs.text
    user.org_id = next(o["id"] for o in orgs.json()["items"] if o["personal"])
    return user


def error_code(response: httpx.Response) -> str:
    """The stable error code of an error response."""
    body: dict[str, Any] = response.json()
    return str(body["error"]["code"])
