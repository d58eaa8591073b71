"""Hot reads: a SQLAlchemy Core select declared once, run on the driver directly.

The few reads every request or every tunnel connect makes (the agent's session check,
a device by id, the health check's ``SELECT 1``) pay SQLAlchemy's per-call machinery
on top of the query: a pool checkout with its events and connection characteristics,
the compiled-cache lookup, greenlet hops, Result and Row building (~280 µs of CPU on
asyncpg, against ~50 µs for the same SELECT as a prepared statement). A
:class:`HotRead` compiles its select once per dialect, keeping what the normal path
would apply per call: the SQL text, the positional order of the parameters and the
bind and result processors of the column types (so a ``UTCDateTime`` comes back
tz-aware, a ``Uuid`` as :class:`uuid.UUID`, on both databases, exactly as the normal
path gives them). It runs on the :class:`~visiona.kit.database.DriverLane` of the
:class:`~visiona.kit.database.Database`: an asyncpg prepared statement, or the
aiosqlite connection in autocommit.

Declare one next to the statement it serves, from the same select::

    _GET = select(*_COLUMNS).where(_mine)
    _GET_HOT = HotRead(_GET, build(Device))

    row = await _GET_HOT.one(db, device_id=..., owner=...)

Given an :class:`~sqlalchemy.ext.asyncio.AsyncConnection` instead of a
:class:`~visiona.kit.database.Database`, the same read runs on that connection the
normal way (inside a transaction, it sees the transaction's writes).

Not supported (refused when declared): expanding ``IN`` parameters (their SQL
changes per call) and ``Numeric``/``Float`` results (asyncpg's processors depend on
the column's type oid, known only from the statement).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import Dialect, Select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import sqltypes

if TYPE_CHECKING:
    from visiona.kit.database import Database

T = TypeVar("T")
_KEYS = itertools.count()


class _Compiled:
    """A select compiled for one dialect, with its parameters' and columns' processors."""

    __slots__ = ("binds", "fixed", "names", "results", "sql")

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        order = compiled.positiontup or []
        self.names: tuple[str, ...] = tuple(order)
        binds: list[Callable[[Any], Any] | None] = []
        #: values of the statement's own binds (e.g. a ``literal``), by name
        self.fixed: dict[str, Any] = {}
        for name in order:
            bind = compiled.binds[name]
            if not bind.required:
                self.fixed[name] = bind.effective_value
            binds.append(bind.type.dialect_impl(dialect).bind_processor(dialect))
        self.binds = tuple(binds)
        results: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(statement.selected_columns):
            process = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if process is not None:
                results.append((index, process))
        #: the processed columns: (position, processor)
        self.results = tuple(results)

    def args(self, params: dict[str, Any]) -> list[Any]:
        """The positional arguments for ``params`` (by name), each through its processor."""
        args: list[Any] = []
        for name, process in zip(self.names, self.binds, strict=True):
            if name in params:
                value = params[name]
            elif name in self.fixed:
                value = self.fixed[name]
            else:
                raise TypeError(f"hot read: missing parameter {name!r}")
            args.append(value if process is None else process(value))
        return args

    def values(self, row: Sequence[Any]) -> list[Any]:
        """The row's values as the normal path returns them."""
        values = list(row)
        for index, process in self.results:
            values[index] = process(values[index])
        return values


def _check(statement: Select[Any]) -> None:
    for bind in statement.compile().binds.values():
        if bind.expanding or bind.literal_execute:
            raise TypeError(f"hot reads cannot take an expanding parameter ({bind.key})")
    for column in statement.selected_columns:
        if isinstance(column.type, sqltypes.NumericCommon):
            raise TypeError(f"hot reads cannot return a Numeric column ({column.name})")


class HotRead(Generic[T]):
    """A select compiled once per dialect, run on the driver, rows built into ``T``.

    ``build`` makes a record from a row's values in the select's column order (the
    repositories' :func:`visiona.kit.records.build` builders fit as they are).
    """

    def __init__(self, statement: Select[Any], build: Callable[[Any], T]) -> None:
        """Declare the hot read of ``statement`` (compiled at first use per dialect).

        Raises TypeError for what a hot read cannot run (see the module docstring).
        """
        _check(statement)
        self.statement = statement
        self._build = build
        self._key = next(_KEYS)  # names its prepared statement on each lane connection
        self._compiled: dict[str, _Compiled] = {}

    def compiled_for(self, dialect: Dialect) -> _Compiled:
        """The statement compiled for ``dialect`` (once)."""
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _Compiled(self.statement, dialect)
        return compiled

    async def one(self, source: Database | AsyncConnection, **params: Any) -> T | None:
        """The record of the row the statement matches, or None.

        The statement is meant to match at most one row (a key lookup); only the first
        is read.
        """
        rows = await self._rows(source, params, first=True)
        return rows[0] if rows else None

    async def all(self, source: Database | AsyncConnection, **params: Any) -> list[T]:
        """The records of every row the statement matches, in its order."""
        return await self._rows(source, params, first=False)

    async def _rows(
        self, source: Database | AsyncConnection, params: dict[str, Any], *, first: bool
    ) -> list[T]:
        build = self._build
        if isinstance(source, AsyncConnection):
            return await self._through(source, params, first=first)
        lane = source.lane
        if lane is None:
            async with source.reading() as conn:
                return await self._through(conn, params, first=first)
        compiled = self.compiled_for(lane.dialect)
        rows = await lane.fetch(self._key, compiled.sql, compiled.args(params), first=first)
        if not compiled.results:
            return [build(row) for row in rows]
        return [build(compiled.values(row)) for row in rows]

    async def _through(
        self, conn: AsyncConnection, params: dict[str, Any], *, first: bool
    ) -> list[T]:
        """The normal path: SQLAlchemy's execution on ``conn``."""
        result = await conn.execute(self.statement, params)
        if first:
            row = result.first()
            return [] if row is None else [self._build(row)]
        return [self._build(row) for row in result]
