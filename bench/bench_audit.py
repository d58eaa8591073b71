"""Audit trail benchmark: what one event adds to a write, and what a prune batch holds.

On SQLite (a file, WAL) and PostgreSQL, through the project's own engine and unit of
work (no HTTP): a device rename as the write, measured without and with its
``device.renamed`` event (``visiona.audit.service.record`` on the same transaction),
interleaved (plain, audited, plain, ...), ROUNDS runs each, median and range. Then
PRUNE_ROWS expired events are pruned in batches of 1000 (each its own transaction):
total time and the slowest batch (how long one batch keeps writers waiting).
Reproduce: `.venv/bin/python -m bench audit`.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from testkit.servers import PostgresServer
from visiona.audit import service as audit
from visiona.audit.retention import prune
from visiona.audit.service import Actor
from visiona.devices import repository as devices
from visiona.kit import migrate
from visiona.kit.database import Database
from visiona.kit.schema import audit_events, organizations, users
from visiona.kit.settings import Settings

WRITES = 300
ROUNDS = 3
PRUNE_ROWS = 20_000


def _database(url: str, data_dir: Path) -> Database:
    settings = Settings(_env_file=None, database_url=url, data_dir=data_dir)
    return Database(settings.build_engine(), settings.database_target)


async def _writes(db: Database, owner: uuid.UUID, device: uuid.UUID, audited: bool) -> float:
    """Seconds per rename transaction, over WRITES of them."""
    started = time.perf_counter()
    for number in range(WRITES):
        async with db.transaction() as conn:
            now = datetime.now(UTC)
            await devices.rename_device(
                conn, owner, device, name=f"n{number}", now=now, stale_before=now
            )
            if audited:
                await audit.record(
                    conn,
                    "device.renamed",
                    actor=Actor.user(owner),
                    owner_id=owner,
                    org_id=owner,
                    target_id=device,
                    device_id=device,
                    detail={"from": f"n{number - 1}", "to": f"n{number}"},
                )
    return (time.perf_counter() - started) / WRITES


async def _setup(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    owner = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(insert(users).values(id=owner, email=f"{owner}@b.example", name="b"))
        # the bench's organisation has the owner's id: one id scopes both
        await conn.execute(insert(organizations).values(id=owner, name="b", personal=True))
        device = await devices.insert_device_if_absent(
            conn,
            device_id=uuid.uuid4(),
            org_id=owner,
            owner_user_id=owner,
            name="bench",
            device_type="kl520",
            serial_number="SN-BENCH",
            now=datetime.now(UTC),
        )
    if device is None:
        raise RuntimeError("the bench device was not created")
    return owner, device.id


class _TimedDatabase(Database):
    """The same database, timing each transaction (each prune batch)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db.engine, db.target)
        self.durations: list[float] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        started = time.perf_counter()
        async with super().transaction() as conn:
            yield conn
        self.durations.append(time.perf_counter() - started)


async def _prune(db: Database, owner: uuid.UUID) -> tuple[float, float, int]:
    old = datetime.now(UTC) - timedelta(days=400)
    rows = [
        {
            "id": uuid.uuid4(),
            "occurred_at": old + timedelta(microseconds=n),
            "owner_id": owner,
            "org_id": owner,
            "actor_type": "system",
            "actor_id": None,
            "action": "tunnel.disconnected",
            "target_type": "device",
            "target_id": str(owner),
            "device_id": None,
            "client_addr": "127.0.0.1",
            "request_id": uuid.uuid4().hex,
            "detail": {"reason": "closed by the agent"},
        }
        for n in range(PRUNE_ROWS)
    ]
    async with db.transaction() as conn:
        for start in range(0, len(rows), 2000):
            await conn.execute(insert(audit_events), rows[start : start + 2000])
    timed = _TimedDatabase(db)
    started = time.perf_counter()
    deleted = await prune(timed, 365)
    return time.perf_counter() - started, max(timed.durations), deleted


async def _run(label: str, url: str, data_dir: Path) -> None:
    db = _database(url, data_dir)
    try:
        owner, device = await _setup(db)
        await _writes(db, owner, device, audited=True)  # warm-up
        plain: list[float] = []
        audited: list[float] = []
        for _ in range(ROUNDS):
            plain.append(await _writes(db, owner, device, audited=False))
            audited.append(await _writes(db, owner, device, audited=True))
        for name, values in (("rename", plain), ("rename + audit event", audited)):
            print(
                f"{label:<10} {name:<22} median {statistics.median(values) * 1000:6.3f} ms/tx  "
                f"range {min(values) * 1000:6.3f}-{max(values) * 1000:6.3f}  "
                f"(n={WRITES} x {ROUNDS})"
            )
        total, slowest, deleted = await _prune(db, owner)
        print(
            f"{label:<10} prune {deleted} expired events: {total:.2f} s in batches of "
            f"{audit.PRUNE_BATCH}, slowest batch {slowest * 1000:.1f} ms"
        )
    finally:
        await db.dispose()


def main() -> None:
    """Run on SQLite, then on a throwaway PostgreSQL."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        migrate.upgrade(url)
        asyncio.run(_run("sqlite", url, Path(tmp)))
        pg = PostgresServer()
        pg.start()
        try:
            pg_url = pg.create_database("bench_audit")
            migrate.upgrade(pg_url)
            asyncio.run(_run("postgres", pg_url, Path(tmp)))
        finally:
            pg.cleanup()


if __name__ == "__main__":
    main()
