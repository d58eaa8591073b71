"""Fixtures for the models tests: a modest upload limit, and an S3 server on loopback."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from moto.server import ThreadedMotoServer

from tests.support.models import MODEL_LIMIT, s3_options
from tests.support.settings import LIFESPAN_TIMEOUT
from visiona.app import create_app
from visiona.kit.settings import Settings


# Small enough to prove the 413 with a few MiB, large enough for the flat-memory test.
@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared per-backend settings with the models tests' upload limit."""
    return settings.model_copy(update={"model_max_bytes": MODEL_LIMIT})


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol server (moto) on a free loopback port, for the whole run."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new empty bucket."""
    name = f"visiona-{uuid.uuid4().hex[:12]}"
    # moto loads its S3 backend on the first request: seconds on a busy machine (httpx's
    # default 5 s timed out in CI), so the bound is generous; it guards a hang only
    response = httpx.put(f"{s3_endpoint}/{name}", timeout=120)
    assert response.status_code == 200, response.text
    return name


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: str, s3_bucket: str) -> Settings:
    """Settings whose model files go to the S3 bucket under the ``visiona`` prefix."""
    return settings.model_copy(
        update={
            "storage_url": f"s3://{s3_bucket}/visiona",
            "storage_options": s3_options(s3_endpoint),
        }
    )


@pytest.fixture
async def s3_app(s3_settings: Settings) -> AsyncIterator[FastAPI]:
    """The application storing model files in S3."""
    application = create_app(s3_settings)
    async with LifespanManager(
        application, startup_timeout=LIFESPAN_TIMEOUT, shutdown_timeout=LIFESPAN_TIMEOUT
    ):
        yield application


@pytest.fixture
async def s3_client(s3_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of :func:`s3_app`."""
    transport = httpx.ASGITransport(app=s3_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
