"""Hot reads (visiona/kit/hotread.py) on both databases: the same values as the normal
path, parameters in the right places, no row, and connections that die under them."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Numeric, bindparam, case, insert, literal, select
from sqlalchemy.sql.expression import cast

from testkit.servers import free_port
from tests.support.settings import make_settings
from visiona.kit.database import Database, DriverLane
from visiona.kit.errors import DatabaseUnavailableError
from visiona.kit.hotread import HotRead
from visiona.kit.schema import devices, models, organizations, users
from visiona.kit.settings import Settings


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.build_engine(), settings.database_target)
    yield database
    await database.dispose()


def _lane(db: Database) -> DriverLane:
    assert db.lane is not None
    return db.lane


def _as_tuple(row: Any) -> tuple[Any, ...]:
    return tuple(row)


async def _owner(db: Database) -> uuid.UUID:
    """A user and their personal organisation, which has the user's id (so the devices'
    ``org_id`` can be the owner's id)."""
    user_id = uuid.uuid4()
    now = datetime.now(UTC)
    async with db.transaction() as conn:
        await conn.execute(
            insert(users).values(
                id=user_id, email=f"{user_id.hex}@x.io", name="n", created_at=now, updated_at=now
            )
        )
        await conn.execute(
            insert(organizations).values(id=user_id, name="n", personal=True, created_by=user_id)
        )
    return user_id


async def _device(db: Database, owner: uuid.UUID, **values: Any) -> uuid.UUID:
    device_id = uuid.uuid4()
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row = {
        "id": device_id,
        "owner_user_id": owner,
        "org_id": owner,
        "name": "ä device",
        "device_type": "kl520",
        "serial_number": f"s-{device_id.hex[:8]}",
        "remote_status": "online",
        "status": "online",
        "busy": True,
        "tcp_ports": [22, 8080],
        "last_seen_at": now,
        "created_at": now,
        "updated_at": now + timedelta(seconds=1),
        "tunnel_epoch": 2**40,
        "current_model_id": uuid.uuid4(),
    }
    row.update(values)
    async with db.transaction() as conn:
        await conn.execute(insert(devices).values(**row))
    return device_id


_DEVICE = select(devices).where(devices.c.id == bindparam("device_id"))
_DEVICE_HOT = HotRead(_DEVICE, _as_tuple)


async def test_values_come_back_as_the_normal_path_gives_them(db: Database) -> None:
    device_id = await _device(db, await _owner(db))
    async with db.reading() as conn:
        normal = tuple((await conn.execute(_DEVICE, {"device_id": device_id})).one())
    hot = await _DEVICE_HOT.one(db, device_id=device_id)
    assert hot == normal
    assert [type(value) for value in hot] == [type(value) for value in normal]
    found = dict(zip(_DEVICE.selected_columns.keys(), hot, strict=True))
    assert found["id"] == device_id
    assert isinstance(found["id"], uuid.UUID)
    assert found["last_seen_at"] == datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert found["last_seen_at"].utcoffset() == timedelta(0)
    assert found["tcp_ports"] == [22, 8080]
    assert found["busy"] is True
    assert found["tunnel_epoch"] == 2**40
    assert found["deleted_at"] is None


async def test_a_lane_is_used_on_file_databases(db: Database) -> None:
    device_id = await _device(db, await _owner(db))
    assert await _DEVICE_HOT.one(db, device_id=device_id) is not None
    assert _lane(db).in_use() == 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Named:
    id: uuid.UUID
    name: str
    shown_status: str


# Parameters out of declaration order, one of them twice, a literal of the statement's own,
# and a datetime compared through UTCDateTime's bind processor.
_NAMED = select(
    devices.c.id,
    devices.c.name,
    case(
        (devices.c.last_seen_at < bindparam("stale_before"), literal("offline")),
        else_=devices.c.remote_status,
    ).label("shown_status"),
).where(
    devices.c.owner_user_id == bindparam("owner"),
    devices.c.name != bindparam("skip"),
    (devices.c.serial_number != bindparam("skip")) | devices.c.serial_number.is_(None),
    devices.c.deleted_at.is_(None),
)
_NAMED_HOT = HotRead(_NAMED.order_by(devices.c.name), lambda row: _Named(*row))


async def test_parameters_go_where_they_are_named(db: Database) -> None:
    owner = await _owner(db)
    seen = datetime(2026, 1, 2, tzinfo=UTC)
    await _device(db, owner, name="a", last_seen_at=seen)
    await _device(db, owner, name="b", last_seen_at=seen + timedelta(hours=2))
    await _device(db, owner, name="skip-me")
    await _device(db, await _owner(db), name="someone else's")
    found = await _NAMED_HOT.all(
        db, skip="skip-me", owner=owner, stale_before=seen + timedelta(hours=1)
    )
    assert [(d.name, d.shown_status) for d in found] == [("a", "offline"), ("b", "online")]
    async with db.reading() as conn:
        normal = await _NAMED_HOT.all(
            conn, owner=owner, skip="skip-me", stale_before=seen + timedelta(hours=1)
        )
    assert normal == found


async def test_no_row_is_none_and_an_empty_list(db: Database) -> None:
    assert await _DEVICE_HOT.one(db, device_id=uuid.uuid4()) is None
    assert await _DEVICE_HOT.all(db, device_id=uuid.uuid4()) == []


async def test_a_missing_parameter_is_a_type_error(db: Database) -> None:
    with pytest.raises(TypeError, match="device_id"):
        await _DEVICE_HOT.one(db, id=uuid.uuid4())


def test_what_a_hot_read_cannot_run_is_refused_when_declared() -> None:
    with pytest.raises(TypeError, match="expanding"):
        HotRead(select(devices.c.id).where(devices.c.id.in_([uuid.uuid4()])), _as_tuple)
    with pytest.raises(TypeError, match="Numeric"):
        HotRead(select(cast(models.c.file_size, Numeric).label("size")), _as_tuple)


async def test_on_a_connection_it_sees_the_transactions_own_writes(db: Database) -> None:
    owner = await _owner(db)
    device_id = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(
            insert(devices).values(
                id=device_id, owner_user_id=owner, org_id=owner, name="uncommitted"
            )
        )
        found = await _DEVICE_HOT.one(conn, device_id=device_id)
        assert found is not None
        assert found[0] == device_id


async def test_a_lane_connection_the_server_closed_is_replaced(db: Database, backend: str) -> None:
    device_id = await _device(db, await _owner(db))
    assert await _DEVICE_HOT.one(db, device_id=device_id) is not None
    lane = _lane(db)
    (conn,) = lane._idle
    if backend == "postgres":
        async with db.reading() as admin:
            await admin.exec_driver_sql(
                f"SELECT pg_terminate_backend({conn.driver.get_server_pid()}, 10000)"
            )
    else:
        await conn.driver.close()
    assert await _DEVICE_HOT.one(db, device_id=device_id) is not None
    assert conn not in lane._idle


async def test_a_connection_dying_during_the_statement_is_retried_once(
    db: Database, backend: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    device_id = await _device(db, await _owner(db))
    assert await _DEVICE_HOT.one(db, device_id=device_id) is not None
    lane = _lane(db)
    (conn,) = lane._idle
    if backend == "postgres":
        # the socket goes away, and the lane does not see it before the statement
        conn.driver.terminate()
        monkeypatch.setattr(lane, "_is_closed", lambda _conn: False)
    else:
        conn.driver._connection.close()
    with caplog.at_level(logging.INFO, logger="visiona.kit.database"):
        assert await _DEVICE_HOT.one(db, device_id=device_id) is not None
    assert "retrying once" in caplog.text
    assert conn not in lane._idle


async def test_an_unreachable_server_is_database_unavailable() -> None:
    settings = make_settings(
        database_url=f"postgresql://u:secret@127.0.0.1:{free_port()}/nope", db_connect_timeout=1
    )
    db = Database(settings.build_engine(), settings.database_target)
    try:
        with pytest.raises(DatabaseUnavailableError):
            await _DEVICE_HOT.one(db, device_id=uuid.uuid4())
        with pytest.raises(DatabaseUnavailableError):
            await db.ping()
    finally:
        await db.dispose()


async def test_no_lane_runs_the_read_through_the_pool(settings: Settings) -> None:
    db = Database(settings.build_engine(), settings.database_target, hot_connections=0)
    try:
        assert db.lane is None
        device_id = await _device(db, await _owner(db))
        found = await _DEVICE_HOT.one(db, device_id=device_id)
        assert found is not None
        assert found[0] == device_id
        await db.ping()
    finally:
        await db.dispose()


async def test_in_memory_sqlite_has_no_lane() -> None:
    settings = make_settings(database_url="sqlite+aiosqlite:///:memory:")
    db = Database(settings.build_engine(), settings.database_target)
    try:
        assert db.lane is None
    finally:
        await db.dispose()
