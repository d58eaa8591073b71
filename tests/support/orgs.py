"""Helpers for organisation tests: team organisations, members with a role, headers."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.api import User, signup

API = "/api/v1"


def acting(user: User, org_id: str) -> dict[str, str]:
    """``user``'s headers, acting in ``org_id``."""
    return {**user.headers, "X-Visiona-Org": org_id}


async def create_org(client: httpx.AsyncClient, owner: User, name: str = "Team") -> str:
    """A new team organisation owned by ``owner``; its id."""
    response = await client.post(f"{API}/orgs", json={"name": name}, headers=owner.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def invite(
    client: httpx.AsyncClient, admin: User, org_id: str, email: str, role: str
) -> dict[str, Any]:
    """An invitation made by ``admin`` (the 201 body, with its token)."""
    response = await client.post(
        f"{API}/orgs/{org_id}/invitations",
        json={"email": email, "role": role},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def accept(client: httpx.AsyncClient, user: User, token: str) -> httpx.Response:
    """``user`` accepts the invitation ``token``."""
    return await client.post(
        f"{API}/invitations/accept", json={"token": token}, headers=user.headers
    )


async def member(client: httpx.AsyncClient, owner: User, org_id: str, role: str) -> User:
    """A new user who joined ``org_id`` (owned by ``owner``) with ``role``."""
    user = await signup(client)
    invited = await invite(client, owner, org_id, user.email, "admin" if role == "owner" else role)
    joined = await accept(client, user, invited["token"])
    assert joined.status_code == 200, joined.text
    if role == "owner":
        promoted = await client.patch(
            f"{API}/orgs/{org_id}/members/{user.id}", json={"role": "owner"}, headers=owner.headers
        )
        assert promoted.status_code == 200, promoted.text
    return user
