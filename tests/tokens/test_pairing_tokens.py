"""Pairing tokens through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI

from tests.support.api import error_code, signup
from tests.support.devices import API, pair, pairing_token, runtime
from visiona.kit.deps import RUNTIME
from visiona.kit.tokens import hash_token


async def test_create_returns_plaintext_once_with_default_ttl(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    before = datetime.now(UTC)
    response = await client.post(f"{API}/pairing-tokens", headers=user.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["token"].startswith("vpt_")
    assert len(body["token"]) == 4 + 43  # 32 random bytes, URL-safe base64 without padding
    # the public id is random: neither the hash nor any part of it
    digest = hash_token(body["token"])
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["id"].replace("-", "") not in digest
    assert body["id"][:8] not in digest
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(seconds=899) <= expires <= datetime.now(UTC) + timedelta(seconds=901)


async def test_ttl_seconds_sets_the_expiry(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    body = await pairing_token(client, user, ttl_seconds=3600)
    expires = datetime.fromisoformat(body["expires_at"])
    assert expires > datetime.now(UTC) + timedelta(seconds=3500)


async def test_ttl_over_the_configured_maximum_is_a_validation_error(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    at_max = await client.post(
        f"{API}/pairing-tokens", json={"ttl_seconds": 86400}, headers=user.headers
    )
    assert at_max.status_code == 201
    for ttl in (86401, 0, -5, "soon"):
        response = await client.post(
            f"{API}/pairing-tokens", json={"ttl_seconds": ttl}, headers=user.headers
        )
        assert response.status_code == 422, ttl
        assert error_code(response) == "validation_error"
    rt = runtime(app)
    RUNTIME.provide(
        app,
        dataclasses.replace(
            rt, settings=rt.settings.model_copy(update={"pairing_token_max_ttl": 600})
        ),
    )
    capped = await client.post(
        f"{API}/pairing-tokens", json={"ttl_seconds": 601}, headers=user.headers
    )
    assert capped.status_code == 422


async def test_list_never_shows_the_plaintext(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    first = await pairing_token(client, user)
    second = await pairing_token(client, user)
    response = await client.get(f"{API}/pairing-tokens", headers=user.headers)
    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["id"] for item in items] == [first["id"], second["id"]]
    assert first["token"] not in response.text
    assert second["token"] not in response.text
    assert set(items[0]) == {"id", "created_at", "expires_at", "used_at", "revoked_at", "device_id"}
    assert items[0]["used_at"] is None
    assert items[0]["revoked_at"] is None
    assert items[0]["device_id"] is None


async def test_list_pages_with_a_cursor(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    created = [(await pairing_token(client, user))["id"] for _ in range(3)]
    first = (await client.get(f"{API}/pairing-tokens?limit=2", headers=user.headers)).json()
    assert first["next_cursor"] is not None
    rest = await client.get(
        f"{API}/pairing-tokens",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=user.headers,
    )
    second = rest.json()
    assert second["next_cursor"] is None
    assert [i["id"] for i in first["items"] + second["items"]] == created


async def test_revoked_pairing_token_is_listed_as_revoked_and_rejected(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    token = await pairing_token(client, user)
    revoked = await client.delete(f"{API}/pairing-tokens/{token['id']}", headers=user.headers)
    assert revoked.status_code == 204
    again = await client.delete(f"{API}/pairing-tokens/{token['id']}", headers=user.headers)
    assert again.status_code == 204  # idempotent
    items = (await client.get(f"{API}/pairing-tokens", headers=user.headers)).json()["items"]
    assert items[0]["revoked_at"] is not None
    response = await pair(client, token["token"])
    assert response.status_code == 401


async def test_revoke_with_malformed_or_unknown_id_is_404(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    for token_id in ("nope", "0" * 64, "A" * 64, "0" * 65, "%20"):
        response = await client.delete(f"{API}/pairing-tokens/{token_id}", headers=user.headers)
        assert response.status_code == 404, token_id
        assert error_code(response) == "not_found"


async def test_pairing_tokens_need_authentication(client: httpx.AsyncClient) -> None:
    assert (await client.post(f"{API}/pairing-tokens")).status_code == 401
    assert (await client.get(f"{API}/pairing-tokens")).status_code == 401
    assert (await client.delete(f"{API}/pairing-tokens/{'0' * 64}")).status_code == 401


async def test_no_response_of_the_token_lists_carries_a_hash(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    created = [await pairing_token(client, user) for _ in range(3)]
    digests = {hash_token(token["token"]) for token in created}
    seen_ids: list[str] = []
    cursor = None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = await client.get(f"{API}/pairing-tokens", params=params, headers=user.headers)
        assert page.status_code == 200
        cursor = page.json()["next_cursor"]
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)) if cursor else b""
        for digest in digests:
            assert digest not in page.text
            assert digest.encode() not in decoded
        seen_ids += [item["id"] for item in page.json()["items"]]
        if cursor is None:
            break
    assert seen_ids == [token["id"] for token in created]
