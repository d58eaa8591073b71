"""The device's response as the proxy parses it (httptools): heads, 1xx, chunked bodies."""

from __future__ import annotations

import pytest

from visiona.tunnel.response import InvalidResponseError, ResponseParser


def test_a_final_head_gives_the_status_and_lowercased_headers():
    parser = ResponseParser()
    head = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Thing: A b\r\n\r\n"
    assert parser.feed_head(head)
    assert parser.status == 201
    assert parser.headers == [(b"content-length", b"5"), (b"x-thing", b"A b")]


def test_an_informational_head_is_skipped_for_the_next_one():
    parser = ResponseParser()
    assert not parser.feed_head(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert parser.feed_head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert parser.status == 200
    assert parser.headers == [(b"content-length", b"0")]


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",
    ],
)
def test_an_invalid_head_is_refused(head: bytes):
    with pytest.raises(InvalidResponseError):
        ResponseParser().feed_head(head)


def test_a_chunked_body_is_decoded_across_any_split():
    parser = ResponseParser()
    assert parser.feed_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    wire = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    pieces: list[bytes] = []
    for i in range(0, len(wire), 3):
        pieces += parser.feed_body(wire[i : i + 3])
    assert b"".join(pieces) == b"hello world"
    assert parser.complete
    assert parser.feed_body(b"") == []


def test_a_chunked_body_cut_short_is_an_error():
    parser = ResponseParser()
    assert parser.feed_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert parser.feed_body(b"5\r\nhel") == [b"hel"]
    with pytest.raises(InvalidResponseError):
        parser.feed_body(b"")


def test_a_malformed_chunk_is_an_error():
    parser = ResponseParser()
    assert parser.feed_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(InvalidResponseError):
        parser.feed_body(b"zz\r\nhello\r\n")
