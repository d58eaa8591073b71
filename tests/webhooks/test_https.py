"""An ``https`` attempt connects to the vetted address yet checks the certificate against
the URL's name (SNI and hostname check), so pinning the address weakens no TLS check."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.support.receiver import Receiver
from visiona.webhooks.dispatcher import encode
from visiona.webhooks.sender import Sender

NAME = "hooks.example.test"
BODY = encode({"type": "device.renamed", "data": {}})


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for :data:`NAME` (openssl) and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            f"/CN={NAME}",
            "-addext",
            f"subjectAltName=DNS:{NAME}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextlib.asynccontextmanager
async def _tls_server(hooks: Receiver, cert: Path, key: Path) -> AsyncIterator[int]:
    config = uvicorn.Config(
        hooks.app(),
        host="127.0.0.1",
        port=0,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn announces it by no event
        await asyncio.sleep(0.01)
    try:
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def resolver(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every name resolves to 127.0.0.1 (as a DNS answer would); the names asked."""
    asked: list[str] = []

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return asked


async def test_https_is_pinned_to_the_address_and_verified_against_the_name(
    certificate: tuple[Path, Path], resolver: list[str]
) -> None:
    cert, key = certificate
    hooks = Receiver()
    path, secret = hooks.path()
    trust = ssl.create_default_context(cafile=str(cert))
    sender = Sender(connect_timeout=2.0, timeout=5.0, allow_private=True, verify=trust)
    try:
        async with _tls_server(hooks, cert, key) as port:
            good = await sender.attempt(
                url=f"https://{NAME}:{port}{path}", secret=secret, event_id="e1", body=BODY
            )
            # the same server under a name its certificate does not carry
            wrong = await sender.attempt(
                url=f"https://other.example.test:{port}{path}",
                secret=secret,
                event_id="e2",
                body=BODY,
            )
    finally:
        await sender.aclose()
    assert good.ok, good.error
    assert hooks.log[0].headers["host"] == f"{NAME}:{port}"
    assert not wrong.ok
    assert wrong.error is not None
    assert wrong.error.startswith("TLS certificate rejected: Hostname mismatch"), wrong.error
    assert [e for _, e in hooks.attempts] == ["e1"]
    assert resolver == [NAME, "other.example.test"]
