"""A streaming ``multipart/form-data`` reader: text fields in memory, one file as a stream.

Starlette's form parser spools file parts to a temporary file (memory first, then
disk): the upload would be written twice and a rejected upload could leave a file
behind until the request ends. This reader drives ``python_multipart``'s push
parser from the request's body stream instead: the file part's bytes are handed
on as they arrive (to the object store), text fields are kept in memory under
small limits, and nothing touches the local disk.

Use: :meth:`StreamingForm.until_file` reads up to the start of the file part,
:meth:`StreamingForm.file_chunks` yields the file's bytes, :meth:`StreamingForm.finish`
reads whatever follows (more text fields).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from visiona.kit.errors import BadRequestError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

_LOGGER = logging.getLogger(__name__)

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 256
MAX_HEADER_BYTES = 8 * 1024


class InvalidMultipartError(BadRequestError):
    """The body is not well-formed ``multipart/form-data`` for this endpoint."""

    code = "invalid_multipart"
    default_message = "The request body is not valid multipart/form-data."


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a ``Content-Type`` header (400 when there is none)."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise InvalidMultipartError("Send the file as multipart/form-data.")
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > 200:
        raise InvalidMultipartError("The multipart/form-data boundary is missing or too long.")
    return boundary


class StreamingForm:
    """Parses a multipart body from ``body`` with at most one file part, ``file_field``."""

    def __init__(
        self, content_type: str | None, body: AsyncIterator[bytes], *, file_field: str = "file"
    ) -> None:
        """Prepare to read ``body`` (nothing is read yet)."""
        self.fields: dict[str, list[str]] = defaultdict(list)
        self.filename: str | None = None
        self._file_field = file_field
        self._body = body
        self._pending: list[bytes] = []
        self._in_file = False
        self._file_seen = False
        self._file_done = False
        self._ended = False
        self._exhausted = False
        self._field_name = ""
        self._field = bytearray()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._header_bytes = 0
        self._headers: dict[str, bytes] = {}
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        self._parser = MultipartParser(boundary_of(content_type), callbacks)

    # -- reading ---------------------------------------------------------------

    async def until_file(self) -> bool:
        """Read until the file part starts (True) or the body ends without one (False)."""
        while not self._file_seen and not self._ended:
            await self._advance()
        return self._file_seen

    async def file_chunks(self) -> AsyncIterator[bytes]:
        """The file part's bytes, as they arrive; ends with the file part."""
        while True:
            while self._pending:
                yield self._pending.pop(0)
            if self._file_done:
                return
            await self._advance()

    async def finish(self) -> None:
        """Read the rest of the body (text fields after the file)."""
        while not self._ended:
            await self._advance()

    async def _advance(self) -> None:
        if self._exhausted:
            raise InvalidMultipartError("The multipart body ended before its closing boundary.")
        try:
            chunk = await anext(self._body)
        except StopAsyncIteration:
            self._exhausted = True
            chunk = b""
        if not chunk:
            if self._exhausted and not self._ended:
                raise InvalidMultipartError("The multipart body ended before its closing boundary.")
            return
        try:
            self._parser.write(chunk)
        except MultipartParseError as err:
            _LOGGER.debug("multipart parse error: %s", type(err).__name__)
            raise InvalidMultipartError() from None

    # -- parser callbacks ---------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0
        self._field = bytearray()
        self._field_name = ""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise InvalidMultipartError("A multipart part has headers that are too large.")

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_name).decode("latin-1").lower()] = bytes(
            self._header_value
        )
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition"))
        name = params.get(b"name")
        if disposition != b"form-data" or name is None:
            raise InvalidMultipartError("Every part needs Content-Disposition: form-data; name.")
        self._field_name = _text(name)
        if self._field_name == self._file_field:
            if self._file_seen:
                raise InvalidMultipartError(f"Send exactly one `{self._file_field}` part.")
            self._file_seen = True
            self._in_file = True
            raw = params.get(b"filename")
            self.filename = _text(raw) if raw else None
            return
        if b"filename" in params:
            raise InvalidMultipartError(f"Only the `{self._file_field}` part may be a file.")
        if sum(len(values) for values in self.fields.values()) >= MAX_FIELDS:
            raise InvalidMultipartError("Too many form fields.")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._pending.append(data[start:end])
            return
        self._field += data[start:end]
        if len(self._field) > MAX_FIELD_BYTES:
            raise InvalidMultipartError(f"The form field `{self._field_name}` is too long.")

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self._file_done = True
            return
        self.fields[self._field_name].append(_text(bytes(self._field)))

    def _on_end(self) -> None:
        self._ended = True


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMultipartError("Form fields must be UTF-8 text.") from None
