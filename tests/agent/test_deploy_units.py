"""The agent's dispatcher and deployment handler on a yamux session over loopback TCP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from visiona.agent.deploy import (
    DeploySettings,
    _Request,
    _run_hook,
    dispatch_stream,
    handle_deployment,
)
from visiona.yamux import Session, YamuxError
from visiona.yamux.tcp import open_tcp_session, serve_tcp

MODEL = uuid.UUID("6f1c7a52-8d3e-4f59-9a57-0c1a2b3c4d5e")


class Harness:
    """A client session whose streams the agent's dispatcher handles on the other side."""

    def __init__(self, deploy: DeploySettings) -> None:
        self.client: Session | None = None
        #: what the dispatcher uses for the next stream (a test may swap it)
        self.deploy = deploy

    async def exchange(self, *pieces: bytes, eof: bool = True) -> bytes:
        """Write ``pieces`` (each flushed on its own) and read until the agent ends the stream."""
        assert self.client is not None
        stream = await self.client.open_stream()
        for piece in pieces:
            stream.write(piece)
            await stream.drain()
            await self.client.ping()
        if eof:
            stream.write_eof()
        answer = bytearray()
        try:
            while chunk := await stream.read(1 << 20):
                answer += chunk
        except YamuxError:
            return b"<reset>" + bytes(answer)
        return bytes(answer)


async def _echo_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read())  # everything up to the half-close, echoed once
    await writer.drain()
    writer.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """The dispatcher behind a yamux server session; the local service echoes its input."""
    service = await asyncio.start_server(_echo_service, "127.0.0.1", 0)
    port = service.sockets[0].getsockname()[1]
    h = Harness(DeploySettings(models_dir=tmp_path / "models"))
    handlers: set[asyncio.Task[None]] = set()

    async def accept(session: Session) -> None:
        while True:
            stream = await session.accept_stream()
            task = asyncio.create_task(dispatch_stream(stream, "127.0.0.1", port, h.deploy))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

    acceptors: list[asyncio.Task[None]] = []
    server = await serve_tcp(
        lambda session: acceptors.append(asyncio.create_task(accept(session))), "127.0.0.1", 0
    )
    client = await open_tcp_session("127.0.0.1", server.sockets[0].getsockname()[1])
    h.client = client
    yield h
    await client.close()
    for task in [*acceptors, *handlers]:
        task.cancel()
    await asyncio.gather(*acceptors, *handlers, return_exceptions=True)
    server.close()
    service.close()


def _head(content: bytes, *, target: str | None = None, sha: str | None = None) -> bytes:
    return (
        f"PUT {target or f'/visiona/models/{MODEL}'} HTTP/1.1\r\nHost: device\r\n"
        f"Content-Length: {len(content)}\r\n"
        f"X-Visiona-Sha256: {sha or hashlib.sha256(content).hexdigest()}\r\n"
        "X-Visiona-Chip: kl520\r\n\r\n"
    ).encode()


def _parse(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    parsed: dict[str, Any] = json.loads(body)
    return status, parsed


async def test_a_head_split_across_writes_is_still_a_deployment(harness: Harness) -> None:
    content = b"\x01" * 300_000
    raw = _head(content) + content
    status, body = _parse(await harness.exchange(raw[:2], raw[2:10], raw[10:]))
    assert status == 200
    stored = harness.deploy.models_dir / f"{MODEL}.nef"
    assert body == {
        "model_id": str(MODEL),
        "path": str(stored),
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "hook": "none",
    }
    assert stored.read_bytes() == content


async def test_a_redeployment_replaces_the_file(harness: Harness) -> None:
    for content in (b"first version", b"second, longer version"):
        status, _ = _parse(await harness.exchange(_head(content) + content))
        assert status == 200
    assert (harness.deploy.models_dir / f"{MODEL}.nef").read_bytes() == b"second, longer version"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"PUT /visiona/other HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        b"PUT /visionary HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /visiona/models/x HTTP/1.1\r\nHost: x\r\n\r\n",
        b"P",
    ],
)
async def test_every_other_stream_is_forwarded_byte_for_byte(
    harness: Harness, request_bytes: bytes
) -> None:
    assert await harness.exchange(request_bytes[:1], request_bytes[1:]) == request_bytes
    assert not harness.deploy.models_dir.exists()


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (_head(b"x", target="/visiona/models/not-a-uuid"), "The model id is not a UUID."),
        (_head(b"x", sha="zz"), "X-Visiona-Sha256 must be a hex sha256."),
        (
            f"PUT /visiona/models/{MODEL} HTTP/1.1\r\nHost: d\r\nX-Visiona-Sha256: {'a' * 64}"
            "\r\nTransfer-Encoding: chunked\r\n\r\n".encode(),
            "Content-Length is required.",
        ),
        (b"PUT /visiona/models/" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", None),
    ],
)
async def test_a_bad_request_is_a_400(harness: Harness, head: bytes, message: str | None) -> None:
    status, body = _parse(await harness.exchange(head + b"x"))
    assert status == 400
    assert body["error"]["code"] == "bad_request"
    if message is not None:
        assert body["error"]["message"] == message
    assert not harness.deploy.models_dir.exists() or not any(harness.deploy.models_dir.iterdir())


async def test_a_wrong_checksum_is_a_422_and_nothing_is_kept(harness: Harness) -> None:
    content = b"model bytes"
    status, body = _parse(await harness.exchange(_head(content, sha="0" * 64) + content))
    assert status == 422
    assert body["error"]["code"] == "sha256_mismatch"
    assert list(harness.deploy.models_dir.iterdir()) == []


async def test_a_body_cut_short_resets_and_leaves_no_file(harness: Harness) -> None:
    content = b"y" * 100_000
    answer = await harness.exchange(_head(content) + content[:40_000])
    assert answer == b"<reset>"
    assert list(harness.deploy.models_dir.iterdir()) == []


async def test_an_unwritable_models_dir_is_a_500(harness: Harness, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    harness.deploy = DeploySettings(models_dir=blocker / "models")
    status, body = _parse(await harness.exchange(_head(b"abc") + b"abc"))
    assert status == 500
    assert body["error"]["code"] == "write_failed"


async def test_a_hook_that_cannot_start_is_a_500(harness: Harness, tmp_path: Path) -> None:
    harness.deploy = DeploySettings(
        models_dir=tmp_path / "models", hook=str(tmp_path / "no-such-tool") + " --flash"
    )
    status, body = _parse(await harness.exchange(_head(b"abc") + b"abc"))
    assert status == 500
    assert body["error"]["code"] == "hook_failed"
    assert body["error"]["message"].startswith("The deploy hook could not start")


async def test_a_hook_with_shell_syntax_runs_in_the_shell_and_its_exit_status_counts(
    harness: Harness, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    harness.deploy = DeploySettings(
        models_dir=tmp_path / "models",
        hook=f'echo "loaded $VISIONA_MODEL_ID" > "{marker}"; echo "flash refused" >&2; exit 3',
    )
    status, body = _parse(await harness.exchange(_head(b"abc") + b"abc"))
    assert status == 500
    assert body["error"] == {
        "code": "hook_failed",
        "message": "The deploy hook exited with 3: flash refused",
    }
    assert marker.read_text() == f"loaded {MODEL}\n"


async def test_a_hook_that_exits_0_answers_hook_ran(harness: Harness, tmp_path: Path) -> None:
    harness.deploy = DeploySettings(
        models_dir=tmp_path / "models", hook='test -s "$VISIONA_MODEL_PATH" && true'
    )
    status, body = _parse(await harness.exchange(_head(b"abc") + b"abc"))
    assert status == 200
    assert body["hook"] == "ran"


async def test_without_a_hook_the_answer_says_none_ran(harness: Harness, tmp_path: Path) -> None:
    status, body = _parse(await harness.exchange(_head(b"abc") + b"abc"))
    assert status == 200
    assert body["hook"] == "none"
    assert body["path"] == str(tmp_path / "models" / f"{MODEL}.nef")


def _tracking(tmp_path: Path, hook: str) -> DeploySettings:
    """Settings whose agent remembers its last successful deployment, as the runner does."""
    current: dict[str, str] = {}

    def deployed(model_id: str, sha256: str) -> None:
        current.update(id=model_id, sha256=sha256)

    return DeploySettings(
        models_dir=tmp_path / "models",
        hook=hook,
        on_deployed=deployed,
        current_model=lambda: current or None,
    )


async def test_the_model_the_agent_runs_already_is_stored_but_not_loaded_again(
    harness: Harness, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    harness.deploy = _tracking(tmp_path, f'echo "$VISIONA_MODEL_SHA256" >> "{runs}"')
    answers = [_parse(await harness.exchange(_head(b"abc") + b"abc")) for _ in range(2)]
    assert [(status, body["hook"]) for status, body in answers] == [(200, "ran"), (200, "already")]
    other = _parse(await harness.exchange(_head(b"other") + b"other"))
    assert other[1]["hook"] == "ran"  # another sha256 of the same model id: loaded
    assert runs.read_text().split() == [
        hashlib.sha256(b"abc").hexdigest(),
        hashlib.sha256(b"other").hexdigest(),
    ]


async def test_the_same_model_sent_twice_at_once_runs_the_hook_once(
    harness: Harness, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    harness.deploy = _tracking(tmp_path, f'sleep 0.3; echo ran >> "{runs}"')
    content = b"model" * 1000
    first, second = await asyncio.gather(
        harness.exchange(_head(content) + content), harness.exchange(_head(content) + content)
    )
    hooks = sorted(_parse(answer)[1]["hook"] for answer in (first, second))
    assert hooks == ["already", "ran"]
    assert runs.read_text().split() == ["ran"]


async def test_a_stopped_hook_is_killed_with_what_its_shell_started(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    request = _Request(MODEL, 3, "a" * 64, "kl520")
    succeeded: list[bool] = []
    # The shell runs the program as its child: killing the shell alone would leave it to
    # finish (as a deploy tool would, having loaded the model behind the agent's back).
    program = f"import time; time.sleep(0.5); open({str(marker)!r}, 'w').write('done')"
    hook = asyncio.create_task(
        _run_hook(
            f"{shlex.quote(sys.executable)} -c {shlex.quote(program)}",
            tmp_path / "m.nef",
            request,
            lambda: succeeded.append(True),
        )
    )
    await asyncio.sleep(0.2)
    hook.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hook
    await asyncio.sleep(0.8)
    assert not marker.exists()
    assert succeeded == []


class _OneShotStream:
    """A stream that delivers one request and whose tunnel then goes away."""

    stream_id = 1

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, _n: int) -> bytes:
        data, self._data = self._data, b""
        return data

    def write(self, _data: bytes) -> None:
        return None

    def write_eof(self) -> None:
        return None

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    def reset(self) -> None:
        return None


async def test_a_tunnel_dropping_during_the_hook_does_not_stop_it_and_the_model_is_recorded(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    deploy = _tracking(tmp_path, f'sleep 0.4; echo ran >> "{runs}"')
    content = b"model"
    stream = _OneShotStream(_head(content) + content)
    handler = asyncio.create_task(handle_deployment(stream, b"", deploy))  # type: ignore[arg-type]
    await asyncio.sleep(0.15)
    handler.cancel()  # the agent tears the dropped tunnel's streams down
    with pytest.raises(asyncio.CancelledError):
        await handler
    await asyncio.wait_for(deploy.applying.idle(), 5)  # what the status reporter waits for
    assert runs.read_text().split() == ["ran"]
    assert deploy.current_model is not None
    assert deploy.current_model() == {
        "id": str(MODEL),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
