"""The node link's wire format: the mutual handshake and what each stream carries.

Documented in docs/tunnel-protocol.md, part 3. Pure functions and small readers: no
I/O besides reading from and writing to a :class:`~visiona.yamux.Stream`.

- Handshake: each side proves it holds the internal token with an HMAC-SHA256 over
  both sides' nonces and its own role label (:func:`proof`), checked in constant time
  (:func:`proof_matches`). The token itself never crosses the wire.
- Stream start: a 4-byte big-endian length, then that many bytes of UTF-8 JSON (the
  exchange's header: :func:`encode_head` / :func:`read_head`). The answer starts the
  same way.
- A proxied request body follows its header as length-prefixed chunks (the same
  4-byte length, then the bytes), ended by an empty chunk (:func:`body_chunk`,
  :data:`END_OF_BODY`). The answer's body follows its head raw, ended by the
  sender's FIN; a stream reset (or a link lost) before that FIN aborts it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visiona.yamux import Stream
    from visiona.yamux.frames import Buffer

#: The link's WebSocket route on every node (under the internal prefix).
LINK_PATH = "/internal/v1/link"
#: Header of the upgrade request and answer: the sender's nonce (64 hex digits).
NONCE_HEADER = "x-visiona-link-nonce"
#: Header of the upgrade request and answer: the sender's node id (informative only).
NODE_HEADER = "x-visiona-node"
#: Version of the stream header (``"v"``).
VERSION = 1
#: WebSocket close code of a link refused for a bad proof.
CLOSE_AUTH_FAILED = 4401
NONCE_SIZE = 32
PROOF_SIZE = 32
#: The largest header accepted at a stream's start (either direction).
MAX_HEAD = 256 * 1024
END_OF_BODY = b"\x00\x00\x00\x00"
_LENGTH = struct.Struct(">I")
_DIALER = b"visiona-link/1 dialer"
_ACCEPTOR = b"visiona-link/1 acceptor"


class LinkProtocolError(ValueError):
    """A peer sent something this side cannot read (a malformed header or chunk)."""


def proof(token: str, *, dialer: bool, dialer_nonce: bytes, acceptor_nonce: bytes) -> bytes:
    """The proof one side sends: HMAC-SHA256(token, role label + both nonces)."""
    label = _DIALER if dialer else _ACCEPTOR
    return hmac.new(token.encode(), label + dialer_nonce + acceptor_nonce, hashlib.sha256).digest()


def proof_matches(expected: bytes, given: bytes | None) -> bool:
    """Compare a received proof with the expected one in constant time."""
    return given is not None and hmac.compare_digest(expected, given)


def parse_nonce(value: str | None) -> bytes | None:
    """A nonce header's value as bytes, or None when it is missing or malformed."""
    if value is None or len(value) != 2 * NONCE_SIZE:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def call_kind(path: str) -> str:
    """The kind of a call on the link: the first segment of its internal path
    (``/deployments/{id}/transfer`` → ``deployments``), so one name serves the HTTP
    route and the link."""
    return path.lstrip("/").split("/", 1)[0]


def encode_head(head: dict[str, Any]) -> bytes:
    """A stream header (or an answer's head): the 4-byte length, then its JSON."""
    data = json.dumps(head, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


def body_chunk(data: bytes) -> list[Buffer]:
    """One chunk of a request body as the buffers to write (never empty: that ends it)."""
    return [_LENGTH.pack(len(data)), data]


async def read_head(stream: Stream) -> dict[str, Any]:
    """Read a stream header or an answer's head.

    Raises :class:`LinkProtocolError` when it is malformed, ``asyncio.IncompleteReadError``
    when the stream ends first, and the stream's errors when it fails.
    """
    (size,) = _LENGTH.unpack(await stream.readexactly(_LENGTH.size))
    if size > MAX_HEAD:
        raise LinkProtocolError(f"header of {size} bytes")
    try:
        head = json.loads(await stream.readexactly(size))
    except (ValueError, UnicodeDecodeError) as err:
        raise LinkProtocolError("header is not JSON") from err
    if not isinstance(head, dict):
        raise LinkProtocolError("header is not an object")
    return head


async def read_chunk(stream: Stream, limit: int) -> bytes:
    """Read one request body chunk (``b""`` ends the body); at most ``limit`` bytes."""
    (size,) = _LENGTH.unpack(await stream.readexactly(_LENGTH.size))
    if size > limit:
        raise LinkProtocolError(f"body chunk of {size} bytes")
    return await stream.readexactly(size) if size else b""


def latin1_pairs(value: object) -> list[tuple[bytes, bytes]]:
    """A header's ``[[name, value], ...]`` list back as ASGI byte pairs (names lowercased)."""
    if not isinstance(value, list):
        raise LinkProtocolError("headers are not a list")
    pairs: list[tuple[bytes, bytes]] = []
    for item in value:
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(p, str) for p in item)
        ):
            raise LinkProtocolError("malformed header pair")
        try:
            pairs.append((item[0].lower().encode("latin-1"), item[1].encode("latin-1")))
        except UnicodeEncodeError as err:
            raise LinkProtocolError("header outside latin-1") from err
    return pairs


def str_pairs(headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
    """ASGI byte pairs as the header's JSON list (latin-1, lossless)."""
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]
