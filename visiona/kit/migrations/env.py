"""Alembic environment: runs migrations on the async engine, outside any server loop.

The URL comes from ``config.attributes["url"]`` (set by :mod:`visiona.kit.migrate`).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from visiona.kit.schema import metadata

config = context.config


def _do_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    url = config.attributes["url"]
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_do_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=str(config.attributes["url"]), target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
elif "connection" in config.attributes:
    # An open synchronous connection (e.g. the app's own in-memory SQLite via run_sync).
    _do_run(config.attributes["connection"])
else:
    asyncio.run(_run_async())
