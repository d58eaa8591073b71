"""The device's HTTP/1.1 response, parsed with httptools (llhttp, the parser uvicorn uses).

h11 (pure Python) cost about a tenth of the server's time on a tiny proxied request:
a connection object per request, primed with a fake request to learn the framing,
then an event machine for one head. llhttp parses the head in C and, for a chunked
body, decodes the chunks; Content-Length and end-of-stream bodies are relayed as raw
reads and never touch the parser.
"""

from __future__ import annotations

import httptools


class InvalidResponseError(ValueError):
    """The device's answer is not a valid HTTP/1.x response."""


class ResponseParser:
    """One response: :meth:`feed_head` until :attr:`status` is final, then the body.

    An informational (1xx) head is skipped: the next head is parsed with a fresh
    parser. Header names are lowercased (values as sent).
    """

    def __init__(self) -> None:
        """Ready for the first head."""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._parser = httptools.HttpResponseParser(self)
        self._head_done = False
        self._body: list[bytes] = []
        self.complete = False

    # -- httptools callbacks ----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        """A header line (httptools callback)."""
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        """The head ended (httptools callback)."""
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        """Decoded body bytes (httptools callback)."""
        self._body.append(body)

    def on_message_complete(self) -> None:
        """The message ended (httptools callback)."""
        self.complete = True

    # -- the caller's side ------------------------------------------------------------
    def feed_head(self, head: bytes) -> bool:
        """Parse one head (up to and including the blank line); True when it is the
        final one (status ≥ 200), False for an informational one (then feed the next)."""
        self.headers = []
        self._head_done = False
        try:
            self._parser.feed_data(head)
        except httptools.HttpParserError as err:
            raise InvalidResponseError(str(err)) from err
        if not self._head_done:
            raise InvalidResponseError("incomplete response head")
        self.status = self._parser.get_status_code()
        if self.status < 200:
            self._parser = httptools.HttpResponseParser(self)
            self.complete = False
            return False
        return True

    def feed_body(self, data: bytes) -> list[bytes]:
        """Decode chunked body bytes; return the decoded pieces (maybe none yet).

        ``data == b""`` is the end of the stream: before the last chunk it is an error.
        """
        if not data:
            if not self.complete:
                raise InvalidResponseError("the chunked body ended early")
            return []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            raise InvalidResponseError(str(err)) from err
        pieces, self._body = self._body, []
        return pieces
