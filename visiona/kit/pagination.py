"""Keyset pagination: an opaque cursor naming the last row of the previous page.

Lists are ordered by ``(created_at, key)`` (either direction); the cursor is the URL-safe base64 of
that pair, so a page never skips or repeats a row when rows are added meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from visiona.kit.errors import ValidationFailedError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True)
class Cursor:
    """The position after which the next page starts."""

    created_at: datetime
    key: str


def encode_cursor(created_at: datetime, key: str) -> str:
    """The opaque cursor for a row with ``created_at`` and ``key``."""
    raw = json.dumps([created_at.astimezone(UTC).isoformat(), key], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Cursor | None:
    """Parse a cursor from a client; a malformed one is a 422 ``validation_error``."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, key = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        moment = datetime.fromisoformat(created)
    except (ValueError, TypeError, binascii.Error, UnicodeError) as err:
        raise bad_cursor() from err
    if not isinstance(key, str) or moment.tzinfo is None:
        raise bad_cursor()
    return Cursor(created_at=moment.astimezone(UTC), key=key)


def bad_cursor() -> ValidationFailedError:
    """The 422 for a cursor that this server did not hand out."""
    return ValidationFailedError(
        [{"loc": ["query", "cursor"], "message": "not a valid cursor", "type": "value_error"}],
        "The cursor is not valid; start again without one.",
    )
