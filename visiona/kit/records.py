"""Typed rows: a frozen dataclass per table, built once from the SQLAlchemy row.

A repository declares its record (``@dataclass(frozen=True, slots=True)``), selects
:func:`columns_of` the record (the columns in the record's field order) and builds
each record positionally with :func:`build`, so a row costs one call and the field
names are checked against the table when the module is imported, not when a user
reaches a misspelled key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from sqlalchemy import Column, Row, Table

T = TypeVar("T")


def columns_of(record: type[Any], table: Table, **replace: Any) -> tuple[Any, ...]:
    """``table``'s columns named like ``record``'s fields, in field order.

    ``replace`` swaps a column for an expression (labelled with the field's name),
    e.g. a computed status. A field the table does not have is an error at import.
    """
    if not is_dataclass(record):
        raise TypeError(f"{record.__name__} is not a dataclass")
    selected: list[Any] = []
    for field in fields(record):
        if field.name in replace:
            selected.append(replace[field.name].label(field.name))
            continue
        column: Column[Any] | None = table.c.get(field.name)
        if column is None:
            raise TypeError(f"{record.__name__}.{field.name} is not a column of {table.name}")
        selected.append(column)
    return tuple(selected)


def build(record: Callable[..., T]) -> Callable[[Row[Any]], T]:
    """A builder of ``record`` from a row selected with :func:`columns_of` (positional)."""

    def make(row: Row[Any]) -> T:
        return record(*row)

    return make
