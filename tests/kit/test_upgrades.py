"""The upgrade gate's pieces: the admission mark and the refusal written by the protocol."""

from __future__ import annotations

import json

from visiona.kit.errors import ServiceUnavailableError
from visiona.kit.upgrades import (
    ADMITTED_HEADER,
    mark_admitted,
    refusal_bytes,
    strip_mark,
    was_admitted,
)


def test_a_mark_sent_by_a_client_is_stripped_and_never_trusted() -> None:
    headers = [(b"host", b"x"), (ADMITTED_HEADER, b"1"), (b"authorization", b"Bearer t")]
    assert not was_admitted(headers)  # a guessed value is not the process's own
    strip_mark(headers)
    assert headers == [(b"host", b"x"), (b"authorization", b"Bearer t")]
    mark_admitted(headers)
    assert was_admitted(headers)


def test_a_refusal_is_a_whole_http_response_with_its_headers_and_error_body() -> None:
    err = ServiceUnavailableError("busy; retry later.", headers={"Retry-After": "3"})
    raw = refusal_bytes(err)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["retry-after"] == "3"
    assert fields["connection"] == "close"
    assert fields["content-type"] == "application/json"
    assert int(fields["content-length"]) == len(body)
    assert json.loads(body) == err.body()
