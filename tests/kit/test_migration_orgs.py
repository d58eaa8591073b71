"""Migration 0009 (organisations) on a database filled at 0008: backfill, down, up again."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from testkit.servers import PostgresServer
from visiona.kit import migrate

BEFORE = "0008"

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000000a")
BOB = uuid.UUID("00000000-0000-4000-8000-00000000000b")
A_DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000d1")
B_DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000d2")
A_MODEL = uuid.UUID("00000000-0000-4000-8000-0000000000e1")
B_MODEL = uuid.UUID("00000000-0000-4000-8000-0000000000e2")
A_DEPLOYMENT = uuid.UUID("00000000-0000-4000-8000-0000000000f1")
A_EVENT = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
NOBODYS_EVENT = uuid.UUID("00000000-0000-4000-8000-0000000000a2")


UUID = sa.Uuid()
DETAIL = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
WHEN = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

OWNED = {  # table -> (key column, owner column)
    "devices": ("id", "owner_user_id"),
    "models": ("id", "owner_user_id"),
    "pairing_tokens": ("token_hash", "user_id"),
    "deployments": ("id", "owner_user_id"),
    "audit_events": ("id", "owner_id"),
}


def _t(name: str, *cols: str | sa.ColumnClause[Any]) -> sa.TableClause:
    return sa.table(name, *(sa.column(c, UUID) if isinstance(c, str) else c for c in cols))


def _text(name: str) -> sa.ColumnClause[Any]:
    return sa.column(name, sa.Text())


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A brand-new empty database URL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'orgs.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"orgs_{uuid.uuid4().hex[:10]}")


def _run(url: str, fn: Any) -> Any:
    async def go() -> Any:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                result = await conn.run_sync(fn)
                await conn.commit()
                return result
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _fill(conn: Connection) -> None:
    """Rows of two users, as the 0008 schema holds them (the same serial in both)."""
    users = _t("users", "id", _text("email"), _text("name"), _text("password_hash"))
    conn.execute(
        sa.insert(users),
        [
            {"id": ALICE, "email": "alice@example.com", "name": "Alice", "password_hash": "x"},
            {"id": BOB, "email": "bob@example.com", "name": "", "password_hash": "x"},
        ],
    )
    devices = _t("devices", "id", "owner_user_id", _text("name"), _text("serial_number"))
    conn.execute(
        sa.insert(devices),
        [
            {"id": A_DEVICE, "owner_user_id": ALICE, "name": "a", "serial_number": "SN1"},
            {"id": B_DEVICE, "owner_user_id": BOB, "name": "b", "serial_number": "SN1"},
        ],
    )
    models = _t("models", "id", "owner_user_id", _text("name"), _text("target_chip"))
    conn.execute(
        sa.insert(models),
        [
            {"id": A_MODEL, "owner_user_id": ALICE, "name": "m", "target_chip": "kl520"},
            {"id": B_MODEL, "owner_user_id": BOB, "name": "m", "target_chip": "kl720"},
        ],
    )
    pairing = _t("pairing_tokens", _text("token_hash"), "public_id", "user_id", "device_id")
    conn.execute(
        sa.insert(pairing),
        [
            {
                "token_hash": "p-used",
                "public_id": uuid.uuid4(),
                "user_id": ALICE,
                "device_id": A_DEVICE,
            },
            {"token_hash": "p-fresh", "public_id": uuid.uuid4(), "user_id": BOB, "device_id": None},
        ],
    )
    sessions = _t("session_tokens", _text("token_hash"), "public_id", "user_id", "device_id")
    conn.execute(
        sa.insert(sessions),
        [{"token_hash": "s-1", "public_id": uuid.uuid4(), "user_id": ALICE, "device_id": A_DEVICE}],
    )
    deployments = _t("deployments", "id", "owner_user_id", "device_id", "model_id", _text("status"))
    conn.execute(
        sa.insert(deployments),
        [
            {
                "id": A_DEPLOYMENT,
                "owner_user_id": ALICE,
                "device_id": A_DEVICE,
                "model_id": A_MODEL,
                "status": "succeeded",
            }
        ],
    )
    audit = _t(
        "audit_events",
        "id",
        sa.column("occurred_at", sa.DateTime(timezone=True)),
        "owner_id",
        _text("actor_type"),
        _text("action"),
        _text("target_type"),
        sa.column("detail", DETAIL),
    )
    common = {"occurred_at": WHEN, "detail": {"k": "v"}}
    conn.execute(
        sa.insert(audit),
        [
            {
                **common,
                "id": A_EVENT,
                "owner_id": ALICE,
                "actor_type": "user",
                "action": "device.paired",
                "target_type": "device",
            },
            {
                **common,
                "id": NOBODYS_EVENT,
                "owner_id": None,
                "actor_type": "system",
                "action": "user.sign_in_failed",
                "target_type": "user",
            },
        ],
    )


def _snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every filled row (key, owner), sorted: what must survive up and down."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    for table, (key, owner) in OWNED.items():
        t = _t(table, _text(key) if key == "token_hash" else key, owner)
        found[table] = sorted(
            (str(k), str(o)) for k, o in conn.execute(sa.select(t.c[key], t.c[owner]))
        )
    sessions = _t("session_tokens", _text("token_hash"), "user_id", "device_id")
    found["session_tokens"] = [tuple(map(str, row)) for row in conn.execute(sa.select(*sessions.c))]
    return found


def _personal_orgs(conn: Connection) -> dict[uuid.UUID, uuid.UUID]:
    """user id -> their personal organisation (asserting one owner membership each)."""
    rows = conn.execute(
        sa.text(
            "SELECT m.user_id, m.org_id, m.role, o.personal, o.name FROM memberships m "
            "JOIN organizations o ON o.id = m.org_id"
        )
    ).all()
    result: dict[uuid.UUID, uuid.UUID] = {}
    for user_id, org_id, role, personal, name in rows:
        assert role == "owner"
        assert personal
        assert name
        result[uuid.UUID(str(user_id))] = uuid.UUID(str(org_id))
    return result


def _org_of_rows(conn: Connection) -> dict[str, dict[str, str | None]]:
    found: dict[str, dict[str, str | None]] = {}
    for table, (key, _owner) in OWNED.items():
        t = _t(table, _text(key) if key == "token_hash" else key, "org_id")
        found[table] = {
            str(k): (None if o is None else str(o))
            for k, o in conn.execute(sa.select(t.c[key], t.c.org_id))
        }
    return found


def test_filled_database_moves_into_personal_orgs_and_round_trips(empty_db: str) -> None:
    migrate.upgrade(empty_db, BEFORE)
    _run(empty_db, _fill)
    before = _run(empty_db, _snapshot)

    migrate.upgrade(empty_db)
    orgs = _run(empty_db, _personal_orgs)
    assert set(orgs) == {ALICE, BOB}
    assert orgs[ALICE] != orgs[BOB]
    placed = _run(empty_db, _org_of_rows)
    alice, bob = str(orgs[ALICE]), str(orgs[BOB])
    assert placed["devices"] == {str(A_DEVICE): alice, str(B_DEVICE): bob}
    assert placed["models"] == {str(A_MODEL): alice, str(B_MODEL): bob}
    assert placed["pairing_tokens"] == {"p-used": alice, "p-fresh": bob}
    assert placed["deployments"] == {str(A_DEPLOYMENT): alice}
    assert placed["audit_events"] == {str(A_EVENT): alice, str(NOBODYS_EVENT): None}
    assert _run(empty_db, _snapshot) == before

    migrate.downgrade(empty_db, BEFORE)
    assert _run(empty_db, _snapshot) == before

    migrate.upgrade(empty_db)
    assert set(_run(empty_db, _personal_orgs)) == {ALICE, BOB}
    assert _run(empty_db, _snapshot) == before
