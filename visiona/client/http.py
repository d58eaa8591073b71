"""A small synchronous HTTP client of the visionA API (httpx), for the command line.

Every failure becomes a :class:`ClientError` with one line a person can act on:
the server's own error message when there is one, otherwise what went wrong on
the way (unreachable server, connection dropped).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from visiona.client.errors import ClientError
from visiona.wire import API_PREFIX

API = API_PREFIX
CHUNK = 1024 * 1024
#: Seconds an event stream may stay silent before the client reconnects (the server
#: sends a keep-alive every 15 s by default).
STREAM_READ_TIMEOUT = 60.0

Progress = Callable[[int], None]


def _reason(response: httpx.Response, *, login_hint: bool = True) -> str:
    try:
        body = response.json()
        error = body["error"]
        details = "; ".join(
            f"{'.'.join(str(p) for p in field['loc'][1:])}: {field['message']}"
            for field in error.get("fields", [])
        )
        text = f"{error['message']} {details}" if details else error["message"]
        message = f"{text} ({error['code']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code} {response.reason_phrase}"
    if response.status_code == 401 and login_hint:
        message += "; run `visiona login`"
    return message


def check_server(server: str) -> None:
    """``ClientError`` with one clear line unless ``server`` is an http(s) URL with a host."""
    parts = urlsplit(server)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ClientError(
            f"--server {server!r} is not a URL: give http://HOST:PORT or https://HOST"
        )


class ApiClient:
    """The API of one server, authenticated with a session token when one is given."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        org_id: str | None = None,
    ) -> None:
        """Prepare a client of ``server`` (e.g. ``http://127.0.0.1:8080``), acting in
        ``org_id`` (``X-Visiona-Org``) when given. ``token``: a session token or an API
        key (``vak_…``; a 401 then does not suggest ``visiona login``).

        ``ClientError`` ("… is not a URL …") unless it is an http(s) URL with a host.
        """
        check_server(server)
        self.server = server.rstrip("/")
        self._api_key = bool(token and token.startswith("vak_"))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if org_id:
            headers["X-Visiona-Org"] = org_id
        self._http = httpx.Client(
            base_url=self.server,
            headers=headers,
            timeout=httpx.Timeout(timeout, read=max(timeout, 300.0)),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        """Use as a context manager."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close on leaving the block."""
        self.close()

    # -- plumbing ----------------------------------------------------------------

    def _send(
        self, request: httpx.Request, *, stream: bool = False, login_hint: bool = True
    ) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream)
        except httpx.TimeoutException as err:
            raise ClientError(
                f"{self.server} did not answer in time ({type(err).__name__})"
            ) from None
        except httpx.ConnectError:
            raise ClientError(f"cannot reach {self.server}") from None
        except httpx.TransportError as err:
            raise ClientError(
                f"the connection to {self.server} broke ({type(err).__name__})"
            ) from None
        if response.is_error:
            if stream:
                response.read()
                response.close()
            hint = login_hint and not self._api_key
            raise ClientError(_reason(response, login_hint=hint))
        return response

    def call(self, method: str, path: str, *, login_hint: bool = True, **kwargs: Any) -> Any:
        """Send a JSON request to ``/api/v1{path}`` and return the decoded body (or None).

        A 401 ends with "run `visiona login`" unless ``login_hint`` is False (``login``
        itself, where a 401 means a wrong email or password).
        """
        response = self._send(
            self._http.build_request(method, f"{API}{path}", **kwargs), login_hint=login_hint
        )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{self.server} did not answer with JSON") from None

    def pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list, following ``next_cursor``."""
        query = dict(params or {})
        while True:
            body = self.call("GET", path, params=query)
            yield from body["items"]
            cursor = body.get("next_cursor")
            if not cursor:
                return
            query["cursor"] = cursor

    @contextmanager
    def event_stream(
        self, types: list[str], last_event_id: str | None = None
    ) -> Iterator[Iterator[ServerEvent]]:
        """``GET /events?type=…`` open (resuming after ``last_event_id``): its events as
        they come.

        ``ClientError`` when the server refuses (the message) or cannot be reached; a
        stream that breaks off later raises ``httpx.TransportError`` from the iterator.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        request = self._http.build_request(
            "GET",
            f"{API}/events",
            params={"type": types} if types else None,
            headers=headers,
            timeout=httpx.Timeout(30.0, read=STREAM_READ_TIMEOUT),
        )
        response = self._send(request, stream=True)
        try:
            yield parse_sse(response.iter_lines())
        finally:
            response.close()

    # -- use cases -----------------------------------------------------------------

    def login(self, email: str, password: str) -> str:
        """Sign in; return the session token."""
        body = self.call(
            "POST", "/auth/login", json={"email": email, "password": password}, login_hint=False
        )
        return str(body["token"])

    def upload_model(
        self,
        path: Path,
        *,
        chip: str,
        name: str | None,
        labels: list[str],
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload ``path`` as a model, streaming it (with its exact Content-Length)."""
        fields = [("target_chip", chip)]
        if name:
            fields.append(("name", name))
        fields += [("labels", label) for label in labels]
        content_type, length, body = multipart_file(path, fields, progress)
        request = self._http.build_request(
            "POST",
            f"{API}/models",
            content=body,
            headers={"Content-Type": content_type, "Content-Length": str(length)},
        )
        result: dict[str, Any] = self._send(request).json()
        return result

    def download_model(
        self,
        model_id: str,
        dest: Path,
        *,
        on_start: Callable[[int], None] | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Download a model's file to ``dest`` and check its sha256; return the model.

        The bytes go to ``partial_path(dest, sha256)`` first and replace ``dest`` only
        when the sha256 matches the one the server recorded. A transfer that breaks
        off keeps that partial file, and the next call resumes it with a range
        request (``If-Range`` makes the server send the whole file again if the
        model's file was replaced in between).
        """
        model: dict[str, Any] = self.call("GET", f"/models/{quote(model_id, safe='')}")
        sha256, size = str(model["sha256"]), int(model["file_size"])
        partial = partial_path(dest, sha256)
        digest, have = _hash_file(partial)
        if on_start:
            on_start(size)
        if progress and have:
            progress(have)
        if have < size:
            headers = {"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'} if have else {}
            request = self._http.build_request(
                "GET", f"{API}/models/{model['id']}/file", headers=headers
            )
            response = self._send(request, stream=True)
            try:
                if response.status_code != 206:  # the whole file: start over
                    digest, have = hashlib.sha256(), 0
                with partial.open("ab" if have else "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        digest.update(chunk)
                        have += len(chunk)
                        if progress:
                            progress(len(chunk))
            except httpx.TransportError as err:
                raise ClientError(
                    f"the download broke off after {have} of {size} bytes "
                    f"({type(err).__name__}); run the same command again to resume"
                ) from None
            finally:
                response.close()
        if digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise ClientError("the downloaded file does not match its sha256; nothing was saved")
        partial.replace(dest)
        return model


@dataclass
class ServerEvent:
    """One Server-Sent Event: its type, data and id (None: the frame had none)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    #: the server's ``retry:`` hint (milliseconds), when this frame carried one
    retry: int | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """The events of a ``text/event-stream`` read line by line (comments skipped); a
    block with only ``retry:`` comes as an event of type ``""``."""
    current = ServerEvent()
    data: list[str] = []
    started = False
    for line in lines:
        if not line:
            if started or current.retry is not None:
                current.data = "\n".join(data)
                if not started:
                    current.event = ""
                yield current
            current, data, started = ServerEvent(), [], False
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if not name:
            continue
        if name == "retry":
            current.retry = int(value) if value.isdigit() else None
            continue
        started = True
        if name == "data":
            data.append(value)
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value


def partial_path(dest: Path, sha256: str) -> Path:
    """Where a download of the file with ``sha256`` to ``dest`` is kept until it is whole."""
    return dest.with_name(f"{dest.name}.{sha256[:16]}.part")


def _hash_file(path: Path) -> tuple[Any, int]:
    """The sha256 state and size of ``path`` so far (empty when it does not exist)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        pass
    return digest, size


def multipart_file(
    path: Path, fields: list[tuple[str, str]], progress: Progress | None = None
) -> tuple[str, int, Iterator[bytes]]:
    """A ``multipart/form-data`` body of text ``fields`` and the file at ``path``.

    Returns the Content-Type, the exact length and an iterator that reads the file
    in 1 MiB chunks as it is sent (so memory stays flat and progress is real).
    """
    boundary = f"visiona-{secrets.token_hex(16)}"
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
        + value.encode()
        + b"\r\n"
        for key, value in fields
    )
    filename = (
        path.name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = os.stat(path).st_size

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
                if progress:
                    progress(len(chunk))
        yield tail

    return f"multipart/form-data; boundary={boundary}", len(head) + size + len(tail), body()
