"""Model files in S3: the same API against a real S3-protocol server (moto) on loopback."""

from __future__ import annotations

import hashlib
from typing import Any

import boto3
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from testkit.servers import free_port
from tests.support.api import error_code, signup
from tests.support.models import (
    CONTENT_TYPE,
    MODEL_LIMIT,
    model_rows,
    nef,
    s3_options,
    streamed_body,
    uploaded,
)
from tests.support.settings import LIFESPAN_TIMEOUT
from visiona.app import create_app
from visiona.kit.settings import Settings

API = "/api/v1/models"


def boto(endpoint: str) -> Any:
    """A boto3 client of the moto server, to look at the bucket from outside."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def keys(endpoint: str, bucket: str) -> list[str]:
    """Every object key in ``bucket``."""
    listing = boto(endpoint).list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def pending_uploads(endpoint: str, bucket: str) -> list[str]:
    """Keys of multipart uploads started and neither completed nor aborted."""
    listing = boto(endpoint).list_multipart_uploads(Bucket=bucket)
    return [item["Key"] for item in listing.get("Uploads", [])]


async def test_upload_download_replace_delete_on_s3(
    s3_client: httpx.AsyncClient, s3_endpoint: str, s3_bucket: str
) -> None:
    client = s3_client
    user = await signup(client)
    content = nef(6 * 1024 * 1024 + 123)  # more than one 5 MiB part
    model = await uploaded(client, user, content, chip="kl720", labels=["face"])
    sha = hashlib.sha256(content).hexdigest()
    assert (model["file_size"], model["sha256"]) == (len(content), sha)
    assert keys(s3_endpoint, s3_bucket) == [f"visiona/models/{user.id}/{model['id']}/{sha}.nef"]
    assert pending_uploads(s3_endpoint, s3_bucket) == []

    path = f"{API}/{model['id']}/file"
    whole = await client.get(path, headers=user.headers)
    assert whole.status_code == 200
    assert whole.headers["content-length"] == str(len(content))
    assert hashlib.sha256(whole.content).hexdigest() == sha
    part = await client.get(path, headers={**user.headers, "Range": "bytes=5242000-5242999"})
    assert part.status_code == 206
    assert part.content == content[5242000:5243000]
    assert part.headers["content-range"] == f"bytes 5242000-5242999/{len(content)}"

    new = nef(4096, 9)
    replaced = await client.put(path, headers=user.headers, files={"file": ("v2.nef", new)})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["created_at"] == model["created_at"]
    new_sha = hashlib.sha256(new).hexdigest()
    assert keys(s3_endpoint, s3_bucket) == [f"visiona/models/{user.id}/{model['id']}/{new_sha}.nef"]
    assert (await client.get(path, headers=user.headers)).content == new

    deleted = await client.delete(f"{API}/{model['id']}", headers=user.headers)
    assert deleted.status_code == 204
    assert keys(s3_endpoint, s3_bucket) == []


async def test_over_the_limit_on_s3_leaves_no_object_and_no_pending_upload(
    s3_client: httpx.AsyncClient, s3_app: FastAPI, s3_endpoint: str, s3_bucket: str
) -> None:
    user = await signup(s3_client)
    response = await s3_client.post(
        API,
        headers={**user.headers, "Content-Type": CONTENT_TYPE},
        content=streamed_body({"target_chip": "kl520"}, MODEL_LIMIT + 1, 256 * 1024),
    )
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"
    assert keys(s3_endpoint, s3_bucket) == []
    assert pending_uploads(s3_endpoint, s3_bucket) == []
    assert await model_rows(s3_app, user.id) == []


@pytest.fixture
async def down_app(settings: Settings) -> Any:
    """The application with its object store on a loopback port where nothing listens."""
    dead = f"http://127.0.0.1:{free_port()}"
    options = {**s3_options(dead), "retry_config": {"max_retries": 0, "retry_timeout": 1}}
    broken = settings.model_copy(
        update={"storage_url": "s3://nowhere/visiona", "storage_options": options}
    )
    application = create_app(broken)
    async with LifespanManager(
        application, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
    ):
        yield application


async def test_storage_down_is_a_503_and_leaves_no_row(down_app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=down_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        user = await signup(client)
        response = await client.post(
            API,
            headers=user.headers,
            data={"target_chip": "kl520"},
            files={"file": ("m.nef", nef(1000))},
        )
        assert response.status_code == 503
        assert error_code(response) == "storage_unavailable"
        assert "127.0.0.1" not in response.text
        assert await model_rows(down_app, user.id) == []
        listed = await client.get(API, headers=user.headers)
        assert listed.status_code == 200


async def test_healthz_names_the_object_store_when_it_is_down(down_app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=down_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["object_storage"] == "unavailable"
    assert response.json()["checks"]["database"] == "ok"


async def test_healthz_checks_the_object_store(s3_client: httpx.AsyncClient) -> None:
    response = await s3_client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["checks"]["object_storage"] == "ok"
