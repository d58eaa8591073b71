"""Helpers for model API tests: uploads, and what the database and the store hold."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from tests.support.api import User
from visiona.kit.runtime import Runtime
from visiona.kit.schema import models

#: The models tests' upload limit (``model_max_bytes``).
MODEL_LIMIT = 16 * 1024 * 1024
BOUNDARY = "visiona-test-boundary"


def nef(size: int, seed: int = 0) -> bytes:
    """``size`` deterministic bytes that stand for a compiled model."""
    block = hashlib.sha256(f"nef-{seed}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


async def upload(
    client: httpx.AsyncClient,
    user: User,
    content: bytes,
    *,
    chip: str = "kl520",
    name: str | None = None,
    labels: list[str] | None = None,
    filename: str = "model.nef",
) -> httpx.Response:
    """``POST /models`` with httpx's own multipart encoder."""
    data: dict[str, Any] = {"target_chip": chip}
    if name is not None:
        data["name"] = name
    if labels is not None:
        data["labels"] = labels
    return await client.post(
        "/api/v1/models",
        headers=user.headers,
        data=data,
        files={"file": (filename, content, "application/octet-stream")},
    )


async def uploaded(
    client: httpx.AsyncClient, user: User, content: bytes, **kw: Any
) -> dict[str, Any]:
    """Upload and return the created model (asserting 201)."""
    response = await upload(client, user, content, **kw)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def multipart_head(fields: dict[str, str], filename: str = "model.nef") -> bytes:
    """Text fields then the opening of the ``file`` part."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        for key, value in fields.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return "".join(parts).encode()


def multipart_tail() -> bytes:
    """The closing of the file part and of the body."""
    return f"\r\n--{BOUNDARY}--\r\n".encode()


CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


async def streamed_body(
    fields: dict[str, str], total: int, chunk: int = 64 * 1024
) -> AsyncIterator[bytes]:
    """A multipart body whose file part is ``total`` bytes, generated chunk by chunk."""
    yield multipart_head(fields)
    block = nef(chunk)
    sent = 0
    while sent < total:
        piece = block[: min(chunk, total - sent)]
        sent += len(piece)
        yield piece
    yield multipart_tail()


def runtime_of(app: FastAPI) -> Runtime:
    """The running application's runtime."""
    runtime: Runtime = app.state.runtime
    return runtime


async def model_rows(app: FastAPI, owner_id: str) -> list[dict[str, Any]]:
    """Every row of ``owner_id`` in the models table, deleted ones included."""
    async with runtime_of(app).db.transaction() as conn:
        rows = await conn.execute(
            select(models).where(models.c.owner_user_id == uuid.UUID(owner_id))
        )
        return [dict(row._mapping) for row in rows]


def files_under(root: Path) -> list[str]:
    """Every file below ``root`` (relative paths), the SQLite database excepted."""
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith("visiona.db")
    )


def labels_json(labels: list[str]) -> str:
    """Labels as one JSON-list field."""
    return json.dumps(labels)


def s3_options(endpoint: str) -> dict[str, Any]:
    """obstore options for the moto server (fixed test credentials, plain HTTP)."""
    return {
        "endpoint": endpoint,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "client_options": {"allow_http": True},
        "retry_config": {"max_retries": 1, "retry_timeout": 5},
    }
