"""Start-up checks for `visiona serve`: fail fast, naming the target, never the secret."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from visiona.kit.migrate import MigrationStatus, status_from_connection
from visiona.kit.settings import Settings


class PreflightError(RuntimeError):
    """A configured dependency cannot be used; the message is one printable line."""


async def check_dependencies(settings: Settings) -> MigrationStatus:
    """Reach the database and Redis within their connect timeouts; return migration status."""
    engine: AsyncEngine = settings.build_engine()
    kind = "SQLite" if settings.is_sqlite else "PostgreSQL"
    try:
        async with asyncio.timeout(settings.db_connect_timeout + 0.5), engine.connect() as conn:
            status = await conn.run_sync(status_from_connection)
    except Exception as err:
        reason = _reason(err)
        raise PreflightError(
            f"cannot reach {kind} at {settings.database_target} ({reason})"
        ) from err
    finally:
        await engine.dispose()
    redis = settings.build_redis()
    if redis is not None:
        try:
            async with asyncio.timeout(settings.redis_connect_timeout + 0.5):
                await redis.ping()
        except Exception as err:
            raise PreflightError(
                f"cannot reach Redis at {settings.redis_target} ({_reason(err)})"
            ) from err
        finally:
            await redis.aclose()
    return status


def _reason(err: BaseException) -> str:
    """A short, secret-free reason: the exception class, plus errno text for OS errors."""
    while err.__cause__ is not None and not isinstance(err, OSError):
        err = err.__cause__
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return type(err).__name__
