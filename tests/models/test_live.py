"""Uploads through a real server on loopback: a client that goes away mid-upload."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from testkit.live import serve_in_thread
from tests.support.api import PASSWORD
from tests.support.models import CONTENT_TYPE, files_under, multipart_head, nef
from tests.support.settings import make_settings
from visiona.app import create_app
from visiona.kit import migrate


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A live server with SQLite and the local store in ``tmp_path``."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'visiona.db'}"
    migrate.upgrade(url)
    settings = make_settings(database_url=url, data_dir=tmp_path)
    with serve_in_thread(create_app(settings)) as server:
        yield server.url, tmp_path


def test_a_client_that_disconnects_mid_upload_leaves_nothing(live: tuple[str, Path]) -> None:
    base, data_dir = live
    email = "gone@example.com"
    httpx.post(
        f"{base}/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "g"}
    ).raise_for_status()
    token = httpx.post(
        f"{base}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    ).json()["token"]
    head = multipart_head({"target_chip": "kl520"})
    declared = len(head) + 32 * 1024 * 1024
    request = (
        f"POST /api/v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    target = urlsplit(base)
    with socket.create_connection((target.hostname, target.port)) as sock:
        sock.sendall(request + head)
        for _ in range(12):  # 12 MiB of the 32 declared: the first 8 MiB part is written
            sock.sendall(nef(1024 * 1024))
        # Wait (bounded) until the partial upload is on disk, so the test proves a clean-up.
        deadline = time.monotonic() + 20
        while not files_under(data_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        in_progress = files_under(data_dir)
    assert in_progress, "the upload never reached the store"
    assert all(name.startswith("objects/uploads/") for name in in_progress), in_progress
    # The server notices the disconnect on its own schedule: wait (bounded) for it.
    deadline = time.monotonic() + 20
    while files_under(data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert files_under(data_dir) == []
    listed = httpx.get(f"{base}/api/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert listed.json() == {"items": [], "next_cursor": None}
