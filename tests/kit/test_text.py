"""Text the database cannot store is refused at the edge with 422, on both databases alike.

PostgreSQL refuses NUL (U+0000) and cannot encode an unpaired surrogate; SQLite
would store either. Every stored or queried string field answers 422
``validation_error`` naming the field, before any SQL runs (so nothing half-done is
left behind, and the unauthenticated login answers 422 too, not 500).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.api import PASSWORD, signup
from tests.support.devices import create_device, pairing_token, serial
from tests.support.models import BOUNDARY, multipart_head, multipart_tail, nef, uploaded
from visiona.kit.text import check_storable

API = "/api/v1"
NUL = "\x00"
SURROGATE = "\ud800"


@pytest.mark.parametrize("bad", [NUL, SURROGATE, f"a{NUL}b", f"x{SURROGATE}y"])
def test_check_storable_refuses_nul_and_unpaired_surrogates(bad: str) -> None:
    with pytest.raises(ValueError, match="must not contain"):
        check_storable(bad)


def test_check_storable_keeps_ordinary_unicode() -> None:
    text = "Lab dongle \u00e9\u4e2d\U0001f600 \t tab"
    assert check_storable(text) == text


def _raw_json(body: dict[str, Any]) -> bytes:
    """JSON with ``\\uXXXX`` escapes kept (an unpaired surrogate cannot be UTF-8 encoded)."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


def _assert_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert [field] in [loc[-1:] for loc in (f["loc"] for f in error["fields"])], error


@pytest.mark.parametrize("field", ["email", "name"])
async def test_register_refuses_unstorable_text(client: httpx.AsyncClient, field: str) -> None:
    bad = NUL
    body = {"email": "ada@example.com", "password": PASSWORD, "name": "Ada"}
    body[field] = f"ada{bad}@example.com" if field == "email" else f"Ada{bad}"
    response = await client.post(
        f"{API}/auth/register",
        content=_raw_json(body),
        headers={"content-type": "application/json"},
    )
    _assert_refused(response, field)


@pytest.mark.parametrize("bad", [NUL, SURROGATE])
async def test_unauthenticated_login_refuses_unstorable_email(
    client: httpx.AsyncClient, bad: str
) -> None:
    response = await client.post(
        f"{API}/auth/login",
        content=_raw_json({"email": f"ada{bad}@example.com", "password": PASSWORD}),
        headers={"content-type": "application/json"},
    )
    _assert_refused(response, "email")


@pytest.mark.parametrize("field", ["name", "serial_number", "device_type"])
async def test_device_create_refuses_unstorable_text(client: httpx.AsyncClient, field: str) -> None:
    bad = NUL
    user = await signup(client)
    body = {"name": "Dev", "serial_number": serial(), "device_type": "kl720"}
    body[field] = f"x{bad}y"
    response = await client.post(
        f"{API}/devices",
        content=_raw_json(body),
        headers={**user.headers, "content-type": "application/json"},
    )
    _assert_refused(response, field)
    listed = await client.get(f"{API}/devices", headers=user.headers)
    assert listed.json()["items"] == []


async def test_device_rename_refuses_unstorable_text(client: httpx.AsyncClient) -> None:
    bad = NUL
    user = await signup(client)
    device = await create_device(client, user, name="Before")
    response = await client.patch(
        f"{API}/devices/{device['id']}",
        content=_raw_json({"name": f"After{bad}"}),
        headers={**user.headers, "content-type": "application/json"},
    )
    _assert_refused(response, "name")
    again = await client.get(f"{API}/devices/{device['id']}", headers=user.headers)
    assert again.json()["name"] == "Before"


@pytest.mark.parametrize("field", ["pairing_token", "serial_number", "device_type", "name"])
async def test_pair_exchange_refuses_unstorable_text_and_keeps_the_token(
    client: httpx.AsyncClient, field: str
) -> None:
    bad = NUL
    user = await signup(client)
    token = await pairing_token(client, user)
    body = {
        "pairing_token": token["token"],
        "serial_number": serial(),
        "device_type": "kl520",
        "name": "Dongle",
    }
    body[field] = f"{body[field]}{bad}"
    response = await client.post(
        f"{API}/agent/pair", content=_raw_json(body), headers={"content-type": "application/json"}
    )
    _assert_refused(response, field)
    # Nothing was consumed: the same token still pairs.
    body[field] = body[field].replace(bad, "")
    paired = await client.post(f"{API}/agent/pair", json=body)
    assert paired.status_code == 201, paired.text


@pytest.mark.parametrize(
    ("data", "filename", "field"),
    [
        ({"target_chip": "kl520", "name": f"m{NUL}"}, "model.nef", "name"),
        ({"target_chip": "kl520", "labels": ["cat", f"d{NUL}g"]}, "model.nef", "1"),
        ({"target_chip": "kl520", "labels": json.dumps(["cat", f"d{NUL}g"])}, "model.nef", "1"),
    ],
    ids=["name", "repeated-labels", "json-labels"],
)
async def test_model_upload_refuses_unstorable_text(
    client: httpx.AsyncClient, data: dict[str, Any], filename: str, field: str
) -> None:
    user = await signup(client)
    response = await client.post(
        f"{API}/models",
        headers=user.headers,
        data=data,
        files={"file": (filename, nef(1000), "application/octet-stream")},
    )
    _assert_refused(response, field)
    listed = await client.get(f"{API}/models", headers=user.headers)
    assert listed.json()["items"] == []


async def test_model_upload_refuses_unstorable_filename(client: httpx.AsyncClient) -> None:
    # httpx would percent-encode the file name: the body is written by hand.
    user = await signup(client)
    body = multipart_head({"target_chip": "kl520"}, filename=f"mo{NUL}del.nef")
    response = await client.post(
        f"{API}/models",
        headers={**user.headers, "content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=body + nef(1000) + multipart_tail(),
    )
    _assert_refused(response, "name")
    listed = await client.get(f"{API}/models", headers=user.headers)
    assert listed.json()["items"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [({"name": "n{}"}, "name"), ({"labels": ["ok", "l{}"]}, "1")],
    ids=["name", "labels"],
)
async def test_model_patch_refuses_unstorable_text(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    bad = NUL
    user = await signup(client)
    model = await uploaded(client, user, nef(1000), name="Before")
    filled = {
        key: value.format(bad) if isinstance(value, str) else [v.format(bad) for v in value]
        for key, value in body.items()
    }
    response = await client.patch(
        f"{API}/models/{model['id']}",
        content=_raw_json(filled),
        headers={**user.headers, "content-type": "application/json"},
    )
    _assert_refused(response, field)
    again = await client.get(f"{API}/models/{model['id']}", headers=user.headers)
    assert again.json()["name"] == "Before"
