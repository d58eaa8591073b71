"""The one keyset pagination: cursor encoding, the query parameters and the order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, DateTime, MetaData, String, Table, select
from sqlalchemy.dialects import sqlite

from visiona.kit.errors import ValidationFailedError
from visiona.kit.pagination import (
    DEFAULT_LIMIT,
    Keyset,
    decode_cursor,
    encode_cursor,
    page_request,
)

_table = Table("things", MetaData(), Column("created_at", DateTime), Column("ref", String))


def test_a_cursor_round_trips_in_utc() -> None:
    moment = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    cursor = decode_cursor(encode_cursor(moment, "abc"))
    assert cursor is not None
    assert cursor.created_at == moment
    assert cursor.created_at.tzinfo == UTC
    assert cursor.key == "abc"
    assert "=" not in encode_cursor(moment, "abc")


@pytest.mark.parametrize(
    "cursor",
    ["not base64!", "bm90IGpzb24", encode_cursor(datetime.now(UTC), "k")[:-3], "WzEsMl0"],
)
def test_a_cursor_this_server_did_not_hand_out_is_a_422(cursor: str) -> None:
    with pytest.raises(ValidationFailedError) as caught:
        decode_cursor(cursor)
    assert caught.value.status_code == 422


async def test_no_cursor_means_the_first_page() -> None:
    assert decode_cursor(None) is None
    assert await page_request() == await page_request(DEFAULT_LIMIT, None)


def test_a_key_of_the_wrong_type_is_a_422() -> None:
    order = Keyset(_table.c.created_at, _table.c.ref, parse_key=uuid.UUID)
    cursor = decode_cursor(encode_cursor(datetime.now(UTC), "not-a-uuid"))
    assert cursor is not None
    with pytest.raises(ValidationFailedError):
        order.after(cursor)


@pytest.mark.parametrize(("descending", "op"), [(False, ">"), (True, "<")])
def test_the_order_compares_both_columns_the_same_way(descending: bool, op: str) -> None:
    order = Keyset(_table.c.created_at, _table.c.ref, descending=descending)
    cursor = decode_cursor(encode_cursor(datetime.now(UTC), "k"))
    assert cursor is not None
    stmt = select(_table).where(order.after(cursor)).order_by(*order.order_by())
    sql = str(stmt.compile(dialect=sqlite.dialect()))
    assert f"things.created_at {op} ?" in sql
    assert f"things.ref {op} ?" in sql
    assert sql.endswith("DESC, things.ref DESC") == descending
