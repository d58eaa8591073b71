"""The receiver example of docs/api-spec.md works: run as written (over HTTP on
loopback), it accepts a delivery signed with its secret by the `standardwebhooks`
library, refuses a tampered or unsigned one, and answers a retry without handling it
twice."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from visiona.webhooks.service import new_secret

ROOT = Path(__file__).resolve().parents[2]


def _example(secret: str) -> dict[str, Any]:
    text = (ROOT / "docs" / "api-spec.md").read_text(encoding="utf-8")
    block = text.split("<!-- receiver-example:start -->\n", 1)[1].split(
        "<!-- receiver-example:end -->"
    )[0]
    code = block.removeprefix("```python\n").rsplit("```", 1)[0]
    assert 'SECRET = "whsec_..."' in code
    namespace: dict[str, Any] = {"__name__": "receiver_example"}
    exec(code.replace('"whsec_..."', repr(secret)), namespace)  # noqa: S102 - our own docs
    return namespace


@pytest.fixture
def receiver() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """The example running on 127.0.0.1 (port 0): its URL, its secret, its namespace."""
    secret = new_secret()
    example = _example(secret)
    server = HTTPServer(("127.0.0.1", 0), example["Receiver"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", secret, example
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _signed(secret: str, body: bytes, event_id: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, now, body),
    }


def test_the_docs_receiver_verifies_signatures_and_skips_retries(
    receiver: tuple[str, str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, secret, example = receiver
    event_id = str(uuid.uuid4())
    body = json.dumps(
        {"type": "webhook.test", "timestamp": "2026-12-07T17:00:00Z", "data": {"id": event_id}}
    ).encode()
    headers = _signed(secret, body, event_id)
    assert httpx.post(url, content=body, headers=headers).status_code == 204
    assert example["seen"] == {event_id}
    assert "webhook.test" in capsys.readouterr().out
    # a retry of the same event: accepted, not handled again
    assert httpx.post(url, content=body, headers=headers).status_code == 204
    assert capsys.readouterr().out == ""
    # tampered, signed with another secret, or unsigned: refused
    assert httpx.post(url, content=body + b" ", headers=headers).status_code == 400
    other = _signed(new_secret(), body, str(uuid.uuid4()))
    assert httpx.post(url, content=body, headers=other).status_code == 400
    assert httpx.post(url, content=body).status_code == 400
    assert example["seen"] == {event_id}
