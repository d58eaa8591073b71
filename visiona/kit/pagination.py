"""Keyset pagination, the one way every list pages: ``paginate(...) -> Page[T]``.

A list is ordered by ``(created_at, key)`` (ascending or descending, both columns the
same way); the cursor is the URL-safe base64 of the last row's pair, so a page never
skips or repeats a row when rows are added meanwhile. Every list takes the same query
parameters (:data:`PageParams`: ``limit`` 1..:data:`MAX_LIMIT`, default
:data:`DEFAULT_LIMIT`; ``cursor`` at most :data:`MAX_CURSOR_LENGTH` characters).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.errors import ValidationFailedError
from visiona.kit.records import AnyRow

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR_LENGTH = 512


@dataclass(frozen=True, slots=True)
class Cursor:
    """The position after which the next page starts."""

    created_at: datetime
    key: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of items and the cursor of the next page (None on the last)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What the client asked for: a page size and where to start."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


async def page_request(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1 to {MAX_LIMIT}.")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(max_length=MAX_CURSOR_LENGTH, description="`next_cursor` of the previous page."),
    ] = None,
) -> PageRequest:
    """The ``limit`` and ``cursor`` query parameters every list takes."""
    return PageRequest(limit=limit, cursor=cursor)


PageParams = Annotated[PageRequest, Depends(page_request)]


@dataclass(frozen=True, slots=True)
class Keyset:
    """How a list is ordered: ``created_at`` then ``key``, both ascending or both descending.

    ``parse_key`` turns the cursor's key back into a value of the key column (a
    ``ValueError`` makes the cursor a 422).
    """

    created_at: Any
    key: Any
    descending: bool = False
    parse_key: Callable[[str], Any] = str

    def after(self, cursor: Cursor) -> ColumnElement[bool]:
        """Rows strictly after ``cursor`` in this order."""
        try:
            key = self.parse_key(cursor.key)
        except ValueError as err:
            raise bad_cursor() from err
        if self.descending:
            return or_(
                self.created_at < cursor.created_at,
                and_(self.created_at == cursor.created_at, self.key < key),
            )
        return or_(
            self.created_at > cursor.created_at,
            and_(self.created_at == cursor.created_at, self.key > key),
        )

    def order_by(self) -> tuple[Any, ...]:
        """The ``ORDER BY`` of this order."""
        if self.descending:
            return self.created_at.desc(), self.key.desc()
        return self.created_at, self.key


async def paginate(
    conn: AsyncConnection,
    stmt: Select[Any],
    keyset: Keyset,
    page: PageRequest,
    build: Callable[[AnyRow], T],
    *,
    params: Mapping[str, Any] | None = None,
) -> Page[T]:
    """Run ``stmt`` for one page in ``keyset`` order; ``build`` makes each item from its row.

    ``stmt`` must select ``keyset``'s two columns; ``params`` binds its bind parameters.
    One row more than the page is read to know whether another page follows; a cursor
    this server did not hand out is a 422 ``validation_error``.
    """
    position = decode_cursor(page.cursor)
    if position is not None:
        stmt = stmt.where(keyset.after(position))
    stmt = stmt.order_by(*keyset.order_by()).limit(page.limit + 1)
    rows = (await conn.execute(stmt, dict(params or {}))).all()
    next_cursor = None
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        last = rows[-1]._mapping
        next_cursor = encode_cursor(last[keyset.created_at], str(last[keyset.key]))
    return Page(items=[build(row) for row in rows], next_cursor=next_cursor)


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
