"""Models through the HTTP API on the local store, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.support.api import error_code, signup
from tests.support.models import (
    CONTENT_TYPE,
    files_under,
    labels_json,
    model_rows,
    multipart_head,
    multipart_tail,
    nef,
    upload,
    uploaded,
)
from visiona.kit.settings import Settings

API = "/api/v1/models"


async def test_upload_returns_the_model_and_stores_the_file_under_a_server_key(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await signup(client)
    content = nef(10_000)
    response = await upload(client, user, content, chip="KL720", name="yolo", labels=["a", "b"])
    assert response.status_code == 201, response.text
    model = response.json()
    sha = hashlib.sha256(content).hexdigest()
    assert model["name"] == "yolo"
    assert model["target_chip"] == "kl720"
    assert model["labels"] == ["a", "b"]
    assert model["file_size"] == len(content)
    assert model["sha256"] == sha
    assert model["source"] == "uploaded"
    assert model["created_at"] == model["updated_at"] == model["uploaded_at"]
    assert "storage_key" not in model
    key = f"models/{user.id}/{model['id']}/{sha}.nef"
    assert files_under(settings.data_dir) == [f"objects/{key}"]
    assert (settings.data_dir / "objects" / key).read_bytes() == content
    fetched = await client.get(f"{API}/{model['id']}", headers=user.headers)
    assert fetched.json() == model


async def test_labels_as_a_json_list_and_name_from_the_file_name(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    response = await client.post(
        API,
        headers=user.headers,
        data={"target_chip": "kl630", "labels": labels_json(["person", "car", "person"])},
        files={"file": ("C:\\models\\mobilenet v2.nef", nef(100))},
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "mobilenet v2"
    assert response.json()["labels"] == ["person", "car"]


async def test_fields_after_the_file_are_read_too(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    content = nef(5000)
    body = (
        multipart_head({})
        + content
        + b"\r\n--visiona-test-boundary\r\n"
        + b'Content-Disposition: form-data; name="target_chip"\r\n\r\nkl730'
        + multipart_tail()
    )
    response = await client.post(
        API, headers={**user.headers, "Content-Type": CONTENT_TYPE}, content=body
    )
    assert response.status_code == 201, response.text
    assert response.json()["target_chip"] == "kl730"
    assert response.json()["sha256"] == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"target_chip": "kl999"}, ["body", "target_chip"]),
        ({}, ["body", "target_chip"]),
        ({"target_chip": "kl520", "labels": "[1, 2]"}, ["body", "labels", "0"]),
        ({"target_chip": "kl520", "labels": "[not json"}, ["body", "labels"]),
        ({"target_chip": "kl520", "name": " "}, ["body", "name"]),
        ({"target_chip": "kl520", "colour": "red"}, ["body", "colour"]),
    ],
)
async def test_invalid_fields_are_a_422_and_leave_nothing(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    fields: dict[str, str],
    loc: list[str],
) -> None:
    user = await signup(client)
    response = await client.post(
        API, headers=user.headers, data=fields, files={"file": ("m.nef", nef(1000))}
    )
    assert response.status_code == 422, response.text
    assert error_code(response) == "validation_error"
    assert loc in [field["loc"] for field in response.json()["error"]["fields"]]
    assert await model_rows(app, user.id) == []
    assert files_under(settings.data_dir) == []


async def test_missing_or_empty_file_is_a_422(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await signup(client)
    missing = await client.post(
        API, headers=user.headers, data={"target_chip": "kl520"}, files={"other": ("x", b"")}
    )
    assert missing.status_code == 400  # a file under another name is refused outright
    assert error_code(missing) == "invalid_multipart"
    no_file = await client.post(
        API,
        headers={**user.headers, "Content-Type": CONTENT_TYPE},
        content=b'--visiona-test-boundary\r\nContent-Disposition: form-data; name="target_chip"'
        b"\r\n\r\nkl520" + multipart_tail(),
    )
    assert no_file.status_code == 422
    assert ["body", "file"] in [f["loc"] for f in no_file.json()["error"]["fields"]]
    empty = await upload(client, user, b"")
    assert empty.status_code == 422
    assert files_under(settings.data_dir) == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"target_chip": "kl520"}'),
        ("multipart/form-data", b"no boundary"),
        (CONTENT_TYPE, multipart_head({"target_chip": "kl520"}) + b"truncated"),
        (
            CONTENT_TYPE,
            b"--visiona-test-boundary\r\nX-No-Disposition: y\r\n\r\nv" + multipart_tail(),
        ),
        (
            CONTENT_TYPE,
            multipart_head({}) + b"ab\r\n" + multipart_head({}) + b"cd" + multipart_tail(),
        ),
        (CONTENT_TYPE, b"--visiona-test-boundary\r\n\xff\xfe garbage"),
    ],
    ids=["json", "no-boundary", "truncated", "no-disposition", "two-files", "garbage"],
)
async def test_malformed_multipart_is_a_400_with_a_code(
    client: httpx.AsyncClient, settings: Settings, content_type: str, body: bytes
) -> None:
    user = await signup(client)
    response = await client.post(
        API, headers={**user.headers, "Content-Type": content_type}, content=body
    )
    assert response.status_code == 400, response.text
    assert error_code(response) == "invalid_multipart"
    assert files_under(settings.data_dir) == []


async def test_over_the_limit_is_a_413_with_no_row_no_object_no_temp_file(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings
) -> None:
    user = await signup(client)
    limit = settings.model_max_bytes

    async def body() -> AsyncIterator[
        bytes
    ]:  # chunked: no Content-Length, the stream itself is counted
        yield multipart_head({"target_chip": "kl520"})
        block = nef(256 * 1024)
        for _ in range(limit // len(block) + 1):
            yield block
        yield multipart_tail()

    streamed = await client.post(
        API, headers={**user.headers, "Content-Type": CONTENT_TYPE}, content=body()
    )
    assert streamed.status_code == 413
    assert error_code(streamed) == "payload_too_large"
    declared = await client.post(
        API,
        headers={**user.headers, "Content-Type": CONTENT_TYPE, "Content-Length": str(10 * limit)},
        content=multipart_head({"target_chip": "kl520"}),
    )
    assert declared.status_code == 413
    assert await model_rows(app, user.id) == []
    assert files_under(settings.data_dir) == []
    exact = await upload(client, user, nef(limit))
    assert exact.status_code == 201, exact.text
    assert exact.json()["file_size"] == limit


async def test_unknown_chip_is_refused_before_the_file_is_stored(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await signup(client)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield multipart_head({"target_chip": "kl999"})
        for _ in range(64):
            sent += 1
            yield nef(64 * 1024)
        yield multipart_tail()

    response = await client.post(
        API, headers={**user.headers, "Content-Type": CONTENT_TYPE}, content=body()
    )
    assert response.status_code == 422
    assert sent < 64  # the server answered without reading the file
    assert files_under(settings.data_dir) == []


async def test_requests_without_a_session_are_401(client: httpx.AsyncClient) -> None:
    model_id = uuid.uuid4()
    for method, path in [
        ("POST", API),
        ("GET", API),
        ("GET", f"{API}/{model_id}"),
        ("GET", f"{API}/{model_id}/file"),
        ("PATCH", f"{API}/{model_id}"),
        ("PUT", f"{API}/{model_id}/file"),
        ("DELETE", f"{API}/{model_id}"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert error_code(response) == "unauthorized"


async def test_another_users_model_is_a_404_on_every_route(client: httpx.AsyncClient) -> None:
    owner = await signup(client)
    other = await signup(client)
    model = await uploaded(client, owner, nef(2000))
    path = f"{API}/{model['id']}"
    responses = [
        await client.get(path, headers=other.headers),
        await client.get(f"{path}/file", headers=other.headers),
        await client.patch(path, headers=other.headers, json={"name": "mine"}),
        await client.put(f"{path}/file", headers=other.headers, files={"file": ("x", b"x")}),
        await client.delete(path, headers=other.headers),
    ]
    unknown = await client.get(f"{API}/{uuid.uuid4()}", headers=other.headers)
    for response in responses:
        assert response.status_code == 404, response.request.method
        assert response.json() == unknown.json()
    listed = await client.get(API, headers=other.headers)
    assert listed.json() == {"items": [], "next_cursor": None}
    still = await client.get(path, headers=owner.headers)
    assert still.json() == model


async def test_list_filters_by_chip_and_source_and_pages_with_a_cursor(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    created = [
        await uploaded(client, user, nef(100, i), chip="kl520" if i % 2 else "kl720", name=f"m{i}")
        for i in range(5)
    ]
    newest_first = [m["id"] for m in reversed(created)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await client.get(API, headers=user.headers, params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 2
        seen += [m["id"] for m in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first
    assert pages == 3
    chips = await client.get(API, headers=user.headers, params={"chip": "kl520"})
    assert [m["name"] for m in chips.json()["items"]] == ["m3", "m1"]
    uploaded_only = await client.get(API, headers=user.headers, params={"source": "uploaded"})
    assert len(uploaded_only.json()["items"]) == 5
    builtin = await client.get(API, headers=user.headers, params={"source": "builtin"})
    assert builtin.json()["items"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": "MjAyNi0wMS0wMXxub3QtYS11dWlk"},  # "2026-01-01|not-a-uuid"
        {"limit": 0},
        {"limit": 201},
        {"chip": "kl999"},
        {"source": "stolen"},
    ],
)
async def test_bad_list_parameters_are_a_422(
    client: httpx.AsyncClient, params: dict[str, str | int]
) -> None:
    user = await signup(client)
    response = await client.get(API, headers=user.headers, params=params)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"


async def test_download_streams_the_file_with_length_etag_and_disposition(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    content = nef(300_000)
    model = await uploaded(client, user, content, name="Détecteur")
    response = await client.get(f"{API}/{model['id']}/file", headers=user.headers)
    assert response.status_code == 200
    assert response.content == content
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["etag"] == f'"{model["sha256"]}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/octet-stream"
    assert "filename*=UTF-8''D%C3%A9tecteur.nef" in response.headers["content-disposition"]
    cached = await client.get(
        f"{API}/{model['id']}/file",
        headers={**user.headers, "If-None-Match": response.headers["etag"]},
    )
    assert cached.status_code == 304
    assert cached.content == b""


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=1000-", 1000, 5000),
        ("bytes=-100", 4900, 5000),
        ("bytes=4990-99999", 4990, 5000),
        ("bytes=4999-4999", 4999, 5000),
    ],
)
async def test_a_single_range_is_a_206(
    client: httpx.AsyncClient, header: str, start: int, end: int
) -> None:
    user = await signup(client)
    content = nef(5000)
    model = await uploaded(client, user, content)
    response = await client.get(
        f"{API}/{model['id']}/file", headers={**user.headers, "Range": header}
    )
    assert response.status_code == 206
    assert response.content == content[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/5000"
    assert response.headers["content-length"] == str(end - start)


async def test_resume_a_download_and_ranges_that_cannot_be_served(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    content = nef(8000)
    model = await uploaded(client, user, content)
    path = f"{API}/{model['id']}/file"
    etag = f'"{model["sha256"]}"'
    first = await client.get(path, headers={**user.headers, "Range": "bytes=0-2999"})
    rest = await client.get(
        path, headers={**user.headers, "Range": "bytes=3000-", "If-Range": etag}
    )
    assert first.content + rest.content == content
    stale = await client.get(
        path, headers={**user.headers, "Range": "bytes=3000-", "If-Range": '"other"'}
    )
    assert stale.status_code == 200
    assert stale.content == content
    beyond = await client.get(path, headers={**user.headers, "Range": "bytes=8000-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == "bytes */8000"
    several = await client.get(path, headers={**user.headers, "Range": "bytes=0-1,5-6"})
    assert several.status_code == 200
    assert several.content == content


async def test_patch_renames_and_relabels(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    model = await uploaded(client, user, nef(100), labels=["x"])
    path = f"{API}/{model['id']}"
    renamed = await client.patch(path, headers=user.headers, json={"name": "  new name "})
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "new name"
    assert renamed.json()["labels"] == ["x"]
    assert renamed.json()["updated_at"] > model["updated_at"]
    relabeled = await client.patch(path, headers=user.headers, json={"labels": ["a", "b"]})
    assert relabeled.json()["labels"] == ["a", "b"]
    assert relabeled.json()["name"] == "new name"
    cleared = await client.patch(path, headers=user.headers, json={"labels": []})
    assert cleared.json()["labels"] == []
    bad = await client.patch(path, headers=user.headers, json={"name": ""})
    assert bad.status_code == 422
    extra = await client.patch(path, headers=user.headers, json={"sha256": "0" * 64})
    assert extra.status_code == 422


async def test_replace_file_keeps_id_and_created_at_and_deletes_the_old_object(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await signup(client)
    model = await uploaded(client, user, nef(1000, 1), name="v1", labels=["l"])
    new = nef(3000, 2)
    response = await client.put(
        f"{API}/{model['id']}/file", headers=user.headers, files={"file": ("v2.nef", new)}
    )
    assert response.status_code == 200, response.text
    replaced = response.json()
    assert replaced["id"] == model["id"]
    assert replaced["created_at"] == model["created_at"]
    assert replaced["updated_at"] > model["updated_at"]
    assert replaced["uploaded_at"] > model["uploaded_at"]
    assert (replaced["name"], replaced["labels"]) == ("v1", ["l"])
    assert replaced["file_size"] == 3000
    assert replaced["sha256"] == hashlib.sha256(new).hexdigest()
    assert files_under(settings.data_dir) == [
        f"objects/models/{user.id}/{model['id']}/{replaced['sha256']}.nef"
    ]
    download = await client.get(f"{API}/{model['id']}/file", headers=user.headers)
    assert download.content == new
    same = await client.put(
        f"{API}/{model['id']}/file", headers=user.headers, files={"file": ("v2.nef", new)}
    )
    assert same.status_code == 200
    assert (await client.get(f"{API}/{model['id']}/file", headers=user.headers)).content == new
    too_big = await client.put(
        f"{API}/{model['id']}/file",
        headers={**user.headers, "Content-Type": CONTENT_TYPE, "Content-Length": str(1 << 40)},
        content=multipart_head({}),
    )
    assert too_big.status_code == 413
    missing = await client.put(
        f"{API}/{uuid.uuid4()}/file", headers=user.headers, files={"file": ("v.nef", new)}
    )
    assert missing.status_code == 404
    assert len(files_under(settings.data_dir)) == 1


async def test_delete_is_soft_and_removes_the_file(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings
) -> None:
    user = await signup(client)
    model = await uploaded(client, user, nef(100))
    keep = await uploaded(client, user, nef(100, 7))
    path = f"{API}/{model['id']}"
    deleted = await client.delete(path, headers=user.headers)
    assert deleted.status_code == 204
    for response in [
        await client.get(path, headers=user.headers),
        await client.get(f"{path}/file", headers=user.headers),
        await client.patch(path, headers=user.headers, json={"name": "x"}),
        await client.delete(path, headers=user.headers),
    ]:
        assert response.status_code == 404
    listed = await client.get(API, headers=user.headers)
    assert [m["id"] for m in listed.json()["items"]] == [keep["id"]]
    rows = {str(row["id"]): row for row in await model_rows(app, user.id)}
    assert rows[model["id"]]["deleted_at"] is not None
    assert rows[keep["id"]]["deleted_at"] is None
    assert files_under(settings.data_dir) == [
        f"objects/models/{user.id}/{keep['id']}/{keep['sha256']}.nef"
    ]


async def test_a_missing_object_is_a_503_not_a_crash(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await signup(client)
    model = await uploaded(client, user, nef(100))
    stored = Path(settings.data_dir, "objects", f"models/{user.id}/{model['id']}")
    await asyncio.to_thread((stored / f"{model['sha256']}.nef").unlink)
    response = await client.get(f"{API}/{model['id']}/file", headers=user.headers)
    assert response.status_code == 503
    assert error_code(response) == "storage_unavailable"


async def test_patch_keeps_the_json_body_limit(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await signup(client)
    model = await uploaded(client, user, nef(100))
    huge = {"name": "x", "labels": ["y" * 90] * (settings.max_body_bytes // 90 + 1)}
    response = await client.patch(f"{API}/{model['id']}", headers=user.headers, json=huge)
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


async def test_openapi_documents_the_multipart_uploads(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    upload_body = spec["paths"]["/api/v1/models"]["post"]["requestBody"]["content"]
    schema = upload_body["multipart/form-data"]["schema"]
    assert schema["required"] == ["file", "target_chip"]
    assert schema["properties"]["target_chip"]["enum"] == [
        "kl520",
        "kl530",
        "kl630",
        "kl720",
        "kl730",
    ]
    replace = spec["paths"]["/api/v1/models/{model_id}/file"]["put"]["requestBody"]
    assert "multipart/form-data" in replace["content"]
    assert "413" in spec["paths"]["/api/v1/models"]["post"]["responses"]
