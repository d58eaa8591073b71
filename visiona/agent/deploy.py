"""Model deployment on the agent: the reserved ``PUT /visiona/models/{id}`` path.

:func:`dispatch_stream` sits in front of the forwarder. It reads the first bytes of
each stream: a stream that starts with ``PUT /visiona/models/`` is a deployment from
the cloud and is handled here (refused 403 ``forbidden_by_agent`` with ``--no-deploy``);
any other stream goes to the local service exactly as before
(:func:`visiona.agent.forward.forward_stream`), with the bytes already read written
first. A stream that starts with ``GET /visiona/tcp/`` is a TCP stream
(:mod:`visiona.agent.tcp`), answered under the ``--allow-port`` policy. With allow
rules (:mod:`visiona.agent.policy`) the request line is checked before the local
service is dialled, and a path under ``/visiona/`` is never forwarded.

A deployment is streamed to a temporary file in the models directory while its
sha256 is computed; once the length and the hash match the headers it is renamed
(``os.replace``, atomic) to ``<models-dir>/<model_id>.nef``. Then the optional hook
runs as ``/bin/sh -c HOOK`` (so shell syntax works: quotes, ``;``, ``&&``, redirections,
``exit N``; its exit status is the hook's) with ``VISIONA_MODEL_PATH``,
``VISIONA_MODEL_ID``, ``VISIONA_MODEL_SHA256`` and ``VISIONA_MODEL_CHIP`` in its
environment. The answer is a small JSON body: 200 ``{"model_id", "path", "size",
"sha256", "hook"}`` (``hook``: ``"ran"``, or ``"none"`` when no hook is configured, so
the cloud records the deployment as ``stored``, not ``succeeded``), or
``{"error": {"code", "message"}}``
with 400 (bad request), 422 (``sha256_mismatch``), 500 (``hook_failed``,
``write_failed``).

Exactly once at the agent: deployments are applied one at a time (the file's rename,
the hook and the record of the model, under one lock; bytes of several may stream in
at once). A model that is the one the agent already runs — the same id and sha256 as
its last successful deployment (``DeploySettings.current_model``) — is stored again
but its hook is not run a second time: the answer says ``"hook": "already"`` (the
server records it as ``succeeded``). So a model sent twice (a server that lost the
first transfer's answer with a node sends it again) is loaded once, even when the
second copy arrives while the first one's hook still runs.

A deployment whose file arrived whole is applied to its end even when its tunnel
drops meanwhile (the tunnel only carried the file; the answer is then lost, the record
is not): the hook is never killed half-way by a network event, and the model it loads
is recorded and reported (:attr:`DeploySettings.applying` tells the agent's status
reporter to wait until nothing is being applied, so a report never describes a state
about to change). Only the agent stopping stops a hook: it runs in a process group of
its own and the whole group is killed (the shell and what it started), so it cannot
finish unseen; one that had already exited 0 is still recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import h11

from visiona.agent.forward import forward_stream
from visiona.agent.policy import REFUSED_HEADER, Policy, RefusedError
from visiona.agent.tcp import MARKER as TCP_MARKER
from visiona.agent.tcp import handle_tcp
from visiona.wire import CHIP_HEADER, MODELS_PATH, SHA256_HEADER
from visiona.yamux import Stream, YamuxError

_LOGGER = logging.getLogger(__name__)
RESERVED = f"PUT {MODELS_PATH}".encode("ascii")
#: The deploy hook is a shell command line, run by the POSIX shell.
SHELL = "/bin/sh"
#: The shell's exit statuses for a command not executable (126) or not found (127).
_SHELL_CANNOT_RUN = (126, 127)
#: Stream starts the agent handles itself: a deployment, a TCP stream.
_MARKERS = (RESERVED, TCP_MARKER)
_HEAD_LIMIT = 16 * 1024
_FIRST_READ = 64 * 1024
_READ_SIZE = 1024 * 1024
#: Seconds a stopped hook's process group is given to be reaped after SIGKILL.
_REAP_TIMEOUT = 5.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    422: "Unprocessable Content",
    500: "Server Error",
}


class Applying:
    """The deployments being applied, each in a task of its own (not its stream's): a
    tunnel that drops does not stop them."""

    def __init__(self) -> None:
        """Nothing applied yet."""
        self._tasks: set[asyncio.Task[dict[str, Any]]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self, work: Coroutine[Any, Any, dict[str, Any]]) -> asyncio.Task[dict[str, Any]]:
        """Run ``work`` (one deployment's application) until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[dict[str, Any]]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()
        if not task.cancelled():
            task.exception()  # retrieved: its stream (if still there) answered it

    async def idle(self) -> None:
        """Wait until no deployment is being applied."""
        await self._idle.wait()

    async def stop(self) -> None:
        """The agent stops: stop what is being applied (its hook is killed)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class DeploySettings:
    """Where deployed models go, what runs after each one, and who hears of a success."""

    models_dir: Path
    hook: str | None = None
    #: called with the model id and sha256 once a deployment succeeded (the file is in
    #: place and the hook, if any, exited 0), before the answer is sent; it may block
    #: briefly (it runs in a worker thread): the agent records the model on disk there
    on_deployed: Callable[[str, str], None] | None = None
    #: the model the agent runs now (``{"id", "sha256"}`` of its last successful
    #: deployment) or None: a deployment of that same model does not run the hook again
    current_model: Callable[[], Mapping[str, str] | None] | None = None
    #: held while a deployment is applied (rename, hook, record): one at a time
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, compare=False, repr=False)
    #: the deployments being applied (they outlive their streams)
    applying: Applying = field(default_factory=Applying, compare=False, repr=False)


def default_models_dir() -> Path:
    """``~/.local/share/visiona/models``."""
    return Path.home() / ".local" / "share" / "visiona" / "models"


class DeployError(Exception):
    """A deployment refused or failed: answered with ``status`` and ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        """Remember the answer to give."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


async def dispatch_stream(
    stream: Stream,
    host: str,
    port: int,
    deploy: DeploySettings,
    *,
    policy: Policy | None = None,
    on_response_head: Callable[[bytes], None] | None = None,
) -> None:
    """Handle a deployment stream here; forward every other stream to ``host:port``.

    With a filtering ``policy`` (allow rules) the request line is checked first and a
    refused request is answered here (:mod:`visiona.agent.policy`); with
    ``policy.deploy`` off a deployment is refused instead of handled.
    ``on_response_head`` sees the first bytes the local service answers.
    """
    policy = policy or _OPEN
    try:
        head = await stream.read(_FIRST_READ)
        while head and any(len(head) < len(m) and m.startswith(head) for m in _MARKERS):
            more = await stream.read(_FIRST_READ)
            if not more:
                break
            head += more
        if head.startswith(TCP_MARKER):
            await handle_tcp(stream, head, policy)
            return
        if head.startswith(RESERVED):
            if policy.deploy:
                await handle_deployment(stream, head, deploy)
            else:
                _refuse(stream, RefusedError(403, "forbidden_by_agent", _NO_DEPLOY))
            return
        if policy.filtering:
            checked = await _checked_head(stream, head, policy)
            if checked is None:
                return
            head = checked
    except YamuxError:
        stream.reset()
        return
    await forward_stream(stream, host, port, head, on_response_head)


_OPEN = Policy()
_NO_DEPLOY = "Deployments are turned off on this agent (--no-deploy)."


async def _checked_head(stream: Stream, head: bytes, policy: Policy) -> bytes | None:
    """``head`` with its request line made canonical, or None once refused and answered."""
    while b"\r\n" not in head:
        if len(head) > _HEAD_LIMIT:
            _refuse(stream, RefusedError(400, "bad_request", "The request line is too long."))
            return None
        more = await stream.read(_FIRST_READ)
        if not more:
            stream.close()
            return None
        head += more
    line, _, rest = head.partition(b"\r\n")
    try:
        canonical = policy.check(line)
    except RefusedError as err:
        _LOGGER.info("agent: refused %s: %s", line[:200].decode("latin-1"), err.message)
        _refuse(stream, err)
        return None
    return canonical + b"\r\n" + rest


def _refuse(stream: Stream, err: RefusedError) -> None:
    """Answer a refused request (never sent to the local service) and close the stream."""
    try:
        body = {"error": {"code": err.code, "message": err.message}}
        _answer(stream, err.status, body, refused=True)
    except YamuxError:
        stream.reset()
        return
    stream.close()


async def handle_deployment(stream: Stream, data: bytes, deploy: DeploySettings) -> None:
    """Receive one model (``data``: what was already read from the stream) and answer."""
    try:
        try:
            status, body = 200, await _receive(stream, data, deploy)
        except DeployError as err:
            _LOGGER.warning("agent: deployment refused (%s): %s", err.code, err.message)
            status, body = err.status, {"error": {"code": err.code, "message": err.message}}
        _answer(stream, status, body)
        await stream.drain()
    except (YamuxError, asyncio.IncompleteReadError) as err:
        _LOGGER.warning("agent: deployment stream %s ended early: %r", stream.stream_id, err)
        stream.reset()
    finally:
        stream.close()


def _answer(stream: Stream, status: int, body: dict[str, Any], *, refused: bool = False) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        + (f"{REFUSED_HEADER}: policy\r\n" if refused else "")
        + "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    stream.write(head + payload)
    stream.write_eof()


@dataclass(frozen=True)
class _Request:
    model_id: uuid.UUID
    length: int
    sha256: str
    chip: str


async def _read_head(stream: Stream, data: bytes) -> tuple[_Request, bytes]:
    """Parse the request head (at most 16 KiB); return it and the body bytes already read."""
    while b"\r\n\r\n" not in data:
        if len(data) > _HEAD_LIMIT:
            raise DeployError(400, "bad_request", "The request head is too large.")
        more = await stream.read(_FIRST_READ)
        if not more:
            raise asyncio.IncompleteReadError(data, None)
        data += more
    end = data.index(b"\r\n\r\n") + 4
    if end > _HEAD_LIMIT:
        raise DeployError(400, "bad_request", "The request head is too large.")
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data[:end])
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as err:
        raise DeployError(400, "bad_request", f"Invalid request: {err}") from err
    if not isinstance(event, h11.Request):
        raise DeployError(400, "bad_request", "Invalid request.")
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers}
    target = event.target.decode("latin-1").split("?", 1)[0]
    try:
        model_id = uuid.UUID(target.removeprefix(MODELS_PATH))
    except ValueError:
        raise DeployError(400, "bad_request", "The model id is not a UUID.") from None
    length = headers.get("content-length", "")
    sha256 = headers.get(SHA256_HEADER.lower(), "").strip().lower()
    if not length.isdigit():
        raise DeployError(400, "bad_request", "Content-Length is required.")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise DeployError(400, "bad_request", f"{SHA256_HEADER} must be a hex sha256.")
    chip = headers.get(CHIP_HEADER.lower(), "").strip()
    return _Request(model_id, int(length), sha256, chip), data[end:]


async def _receive(stream: Stream, data: bytes, deploy: DeploySettings) -> dict[str, Any]:
    request, body = await _read_head(stream, data)
    models_dir = deploy.models_dir
    try:
        await asyncio.to_thread(models_dir.mkdir, parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{request.model_id}.", suffix=".part", dir=models_dir
        )
    except OSError as err:
        raise DeployError(
            500, "write_failed", f"Cannot write to the models directory: {err}"
        ) from err
    temp = Path(temp_name)
    final = models_dir / f"{request.model_id}.nef"
    try:
        with os.fdopen(fd, "wb") as file:
            digest = await _copy_to_file(stream, body, request.length, file)
    except BaseException as err:
        await asyncio.to_thread(temp.unlink, missing_ok=True)
        if isinstance(err, OSError):
            raise DeployError(500, "write_failed", f"Cannot write the model file: {err}") from err
        raise
    if digest != request.sha256:
        await asyncio.to_thread(temp.unlink, missing_ok=True)
        raise DeployError(422, "sha256_mismatch", "The file's sha256 does not match.")
    # The file is here whole: applied to its end, even if this stream's tunnel drops.
    return await asyncio.shield(deploy.applying.start(_apply_locked(deploy, request, temp, final)))


async def _apply_locked(
    deploy: DeploySettings, request: _Request, temp: Path, final: Path
) -> dict[str, Any]:
    """Apply one received deployment, one at a time (``deploy.lock``)."""
    try:
        async with deploy.lock:
            return await _apply(deploy, request, temp, final)
    except OSError as err:
        raise DeployError(500, "write_failed", f"Cannot write the model file: {err}") from err
    finally:
        await asyncio.to_thread(temp.unlink, missing_ok=True)


def _runs_already(deploy: DeploySettings, request: _Request) -> bool:
    """Whether the model is the one the agent runs now (its last successful deployment)."""
    current = deploy.current_model() if deploy.current_model is not None else None
    return (
        current is not None
        and current.get("id") == str(request.model_id)
        and current.get("sha256") == request.sha256
    )


async def _apply(
    deploy: DeploySettings, request: _Request, temp: Path, final: Path
) -> dict[str, Any]:
    """Put the received file in place, run the hook (unless the agent already runs this
    model) and record the model; called under ``deploy.lock``."""
    already = _runs_already(deploy, request)
    await asyncio.to_thread(os.replace, temp, final)
    _LOGGER.info("agent: model %s stored in %s (%s bytes)", request.model_id, final, request.length)
    answer: dict[str, Any] = {
        "model_id": str(request.model_id),
        "path": str(final),
        "size": request.length,
        "sha256": request.sha256,
        "hook": "ran" if deploy.hook else "none",
    }
    if already:
        # Sent again (the server lost the first transfer's answer): loaded once only.
        _LOGGER.info(
            "agent: model %s (sha256 %s) is the one this agent runs already; hook not run again",
            request.model_id,
            request.sha256[:12],
        )
        if deploy.hook:
            answer["hook"] = "already"
        return answer
    if deploy.hook:
        await _run_hook(deploy.hook, final, request, lambda: _record(deploy, request))
    else:
        _LOGGER.info(
            "agent: model %s stored at %s; no deploy hook configured", request.model_id, final
        )
    # Before the answer: a server that misses the answer still learns of the model
    # from the agent's next status report.
    await asyncio.to_thread(_record, deploy, request)
    return answer


def _record(deploy: DeploySettings, request: _Request) -> None:
    """Tell the agent the deployment succeeded (it records the model on disk)."""
    if deploy.on_deployed is None:
        return
    try:
        deploy.on_deployed(str(request.model_id), request.sha256)
    except OSError as err:
        _LOGGER.warning("agent: cannot record the deployed model: %s", err)


def _write(file: IO[bytes], digest: Any, chunk: bytes) -> None:
    file.write(chunk)
    digest.update(chunk)


async def _copy_to_file(stream: Stream, first: bytes, length: int, file: IO[bytes]) -> str:
    """Write exactly ``length`` body bytes to ``file``; return their sha256 (hex)."""
    digest = hashlib.sha256()
    if len(first) > length:
        raise DeployError(400, "bad_request", "More data than Content-Length.")
    left = length - len(first)
    chunk = first
    while True:
        if chunk:
            await asyncio.to_thread(_write, file, digest, chunk)
        if not left:
            break
        chunk = await stream.read(min(left, _READ_SIZE))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(chunk)
    await asyncio.to_thread(_flush, file)
    return digest.hexdigest()


def _flush(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())


async def _run_hook(
    command: str, path: Path, request: _Request, on_success: Callable[[], None]
) -> None:
    """Run the deploy hook as ``/bin/sh -c command``; a failure to start it or a non-zero
    exit (the shell's, so ``exit 3`` counts) is a 500 ``hook_failed``.

    The hook runs in a process group of its own. Cancelled (the agent stops), the
    agent kills the whole group — the shell does not pass a signal on to the commands it
    started, so killing the shell alone would let the hook finish unseen — and waits for
    it; a hook that had exited 0 just before still counts (``on_success`` is called)."""
    env = {
        **os.environ,
        "VISIONA_MODEL_PATH": str(path),
        "VISIONA_MODEL_ID": str(request.model_id),
        "VISIONA_MODEL_SHA256": request.sha256,
        "VISIONA_MODEL_CHIP": request.chip,
    }
    try:
        process = await asyncio.create_subprocess_exec(
            SHELL,
            "-c",
            command,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: killed whole when stopped
        )
    except (OSError, ValueError) as err:
        raise DeployError(500, "hook_failed", f"The deploy hook could not start: {err}") from err
    try:
        _, stderr = await process.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(process.wait()), _REAP_TIMEOUT)
        if process.returncode == 0:  # it had finished: that deployment did happen
            _LOGGER.info(
                "agent: deploy hook for model %s succeeded as it was stopped", request.model_id
            )
            on_success()
        else:
            _LOGGER.warning("agent: deploy hook for model %s stopped", request.model_id)
        raise
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        if process.returncode in _SHELL_CANNOT_RUN:
            raise DeployError(
                500,
                "hook_failed",
                f"The deploy hook could not start (exit {process.returncode}): {tail[0][:500]}",
            )
        raise DeployError(
            500,
            "hook_failed",
            f"The deploy hook exited with {process.returncode}: {tail[0][:500]}".rstrip(": "),
        )
    _LOGGER.info("agent: deploy hook for model %s succeeded", request.model_id)
