"""`visiona events` against a live server: recent events, and `--follow --json` in a
real subprocess printing an event as it happens."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from typer.testing import CliRunner, Result

from testkit.live import LiveServer, serve_in_thread
from tests.support.api import PASSWORD
from tests.support.devices import serial
from tests.support.settings import make_settings
from visiona.app import create_app
from visiona.cli import app as cli
from visiona.client.events import follow
from visiona.client.http import ServerEvent, parse_sse
from visiona.events.dependencies import EVENTS
from visiona.kit import migrate


def run(*args: str, stdin: str | None = None) -> Result:
    """Invoke ``visiona ARGS`` in process."""
    return CliRunner().invoke(cli, list(args), input=stdin)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live server on SQLite for this module."""
    data = tmp_path_factory.mktemp("events-cli")
    url = f"sqlite+aiosqlite:///{data / 'visiona.db'}"
    migrate.upgrade(url)
    with serve_in_thread(create_app(make_settings(database_url=url, data_dir=data))) as live:
        yield live


@pytest.fixture
def token(server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new account logged in with `visiona login` (config in tmp_path); its token."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("VISIONA_SERVER", raising=False)
    email = f"events-{uuid.uuid4().hex[:10]}@example.com"
    created = httpx.post(
        f"{server.url}/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "name": "CLI"},
    )
    assert created.status_code == 201
    result = run("login", "--server", server.url, "--email", email, stdin=f"{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    login = httpx.post(
        f"{server.url}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    return str(login.json()["token"])


def _device(server: LiveServer, token: str) -> str:
    created = httpx.post(
        f"{server.url}/api/v1/devices",
        json={"name": "d", "serial_number": serial(), "device_type": "kl520"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _rename(server: LiveServer, token: str, device_id: str, name: str) -> None:
    renamed = httpx.patch(
        f"{server.url}/api/v1/devices/{device_id}",
        json={"name": name},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert renamed.status_code == 200, renamed.text


def test_events_prints_the_recent_ones_oldest_first_filtered(
    server: LiveServer, token: str
) -> None:
    device_id = _device(server, token)
    for name in ("One", "Two"):
        _rename(server, token, device_id, name)
    result = run("events", "--json", "--type", "device.renamed", "--limit", "5")
    assert result.exit_code == 0, result.output
    items = [json.loads(line) for line in result.output.splitlines()]
    assert [item["detail"]["to"] for item in items] == ["One", "Two"]
    text = run("events", "--type", "device.*")
    assert text.exit_code == 0, text.output
    assert "device.created" in text.output
    assert "device.renamed" in text.output
    bad = run("events", "--follow", "--type", "nope")
    assert bad.exit_code == 1
    assert "names no event type" in bad.output


def test_events_follow_json_prints_an_event_as_it_happens(
    server: LiveServer, token: str, tmp_path: Path
) -> None:
    device_id = _device(server, token)
    hub = EVENTS.of(server.app)
    before = hub.open()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("VISIONA_SERVER", None)
    with subprocess.Popen(
        [sys.executable, "-m", "visiona", "events", "--follow", "--json", "--type", "device.*"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            deadline = time.monotonic() + 30
            while hub.open() <= before:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the CLI did not connect"
                time.sleep(0.05)
            _rename(server, token, device_id, "Followed")
            assert proc.stdout is not None
            first = json.loads(proc.stdout.readline())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert first["action"] == "device.renamed"
    assert first["detail"]["to"] == "Followed"


def test_the_sse_parser_reads_frames_comments_and_retry() -> None:
    lines = [
        "retry: 3000",
        "",
        ": keep-alive",
        "",
        "id: 1",
        "event: device.renamed",
        'data: {"a":',
        "data: 1}",
        "",
        "event: reset",
        'data: {"reason":"unknown_id"}',
        "",
    ]
    events = list(parse_sse(lines))
    assert [(e.event, e.id, e.retry) for e in events] == [
        ("", None, 3000),
        ("device.renamed", "1", None),
        ("reset", None, None),
    ]
    assert events[1].data == '{"a":\n1}'


class _DroppingApi:
    """An API whose event stream breaks off after each scripted batch of events."""

    def __init__(self, batches: list[list[ServerEvent]]) -> None:
        self.batches = batches
        self.resumed_after: list[str | None] = []

    @contextlib.contextmanager
    def event_stream(
        self, types: list[str], last_event_id: str | None = None
    ) -> Iterator[Iterator[ServerEvent]]:
        assert types == []
        self.resumed_after.append(last_event_id)
        batch = self.batches.pop(0)

        def events() -> Iterator[ServerEvent]:
            yield from batch
            raise httpx.ReadError("dropped")

        yield events()


def _server_event(number: int) -> ServerEvent:
    body = {"id": str(number), "action": "device.renamed", "detail": {"to": str(number)}}
    return ServerEvent(event="device.renamed", data=json.dumps(body), id=str(number))


def test_follow_reconnects_after_a_drop_resuming_after_the_last_event_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "sleep", lambda _seconds: None)
    api = _DroppingApi(
        [
            [ServerEvent(event="", retry=3000), _server_event(1), _server_event(2)],
            [ServerEvent(event="reset", data='{"reason":"too_old"}'), _server_event(3)],
        ]
    )
    printed: list[str] = []
    warnings: list[str] = []
    count = follow(
        cast("Any", api),
        [],
        as_json=True,
        echo=printed.append,
        warn=warnings.append,
        max_events=3,
    )
    assert count == 3
    assert [json.loads(line)["id"] for line in printed] == ["1", "2", "3"]
    assert api.resumed_after == [None, "2"]
    assert any("broke off" in text for text in warnings)
    assert any("missed" in text for text in warnings)
