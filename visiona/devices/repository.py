"""SQL for devices. Takes a connection; never commits.

Every query a user can reach is scoped to the organisation (``org_id``; the
``owner_user_id`` column says who created the row); "now" is always bound from
Python so SQLite's text timestamps and PostgreSQL's ``timestamptz`` compare alike.
Statements without per-call structure are built once, here, with bind parameters.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Insert, and_, bindparam, case, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.database import Database
from visiona.kit.hotread import HotRead
from visiona.kit.pagination import Keyset, Page, PageRequest, paginate
from visiona.kit.records import build, columns_of
from visiona.kit.schema import devices
from visiona.wire import RemoteStatus, UsbStatus


@dataclass(frozen=True, slots=True)
class Device:
    """A live device as the repository returns it."""

    id: uuid.UUID
    owner_user_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    device_type: str | None
    serial_number: str | None
    remote_status: RemoteStatus
    status: UsbStatus
    busy: bool
    #: the TCP ports the agent allows, as it last reported (None: it never said)
    tcp_ports: list[int] | None
    last_seen_at: datetime | None
    last_connected_at: datetime | None
    paired_at: datetime | None
    created_at: datetime
    updated_at: datetime
    #: the model it runs now and the one before (migration 0008; None: unknown)
    current_model_id: uuid.UUID | None = None
    current_model_sha256: str | None = None
    previous_model_id: uuid.UUID | None = None
    previous_model_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """A live device without its status: for checks of ownership and type."""

    id: uuid.UUID
    owner_user_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    device_type: str | None


_live = devices.c.deleted_at.is_(None)
# ``remote_status`` as read (the effective status): a device not seen since
# ``:stale_before`` reads ``offline``. A node that crashed cannot write ``offline`` for
# its devices; their ``last_seen_at`` stops moving (the tunnel refreshes it every status
# interval), so every read of a :class:`Device` binds ``stale_before`` (required, from
# :meth:`visiona.devices.service.Devices.stale_before`): there is no read without it.
_read_status = case(
    (
        and_(
            devices.c.remote_status != "offline",
            devices.c.last_seen_at < bindparam("stale_before"),
        ),
        literal("offline"),
    ),
    else_=devices.c.remote_status,
)
_COLUMNS = columns_of(Device, devices, remote_status=_read_status)
_RAW_COLUMNS = columns_of(Device, devices)
_device = build(Device)
_ORDER = Keyset(devices.c.created_at, devices.c.id, parse_key=uuid.UUID)
_mine = and_(
    devices.c.id == bindparam("device_id"),
    devices.c.org_id == bindparam("org"),
    _live,
)

_GET = select(*_COLUMNS).where(_mine)
# `GET /devices/{id}` reads it: a hot read (compiled once, run on the driver)
_GET_HOT = HotRead(_GET, _device)
_REF = select(*columns_of(DeviceRef, devices)).where(_mine)
_device_ref = build(DeviceRef)
_BY_SERIAL = select(*_RAW_COLUMNS).where(
    devices.c.org_id == bindparam("org"),
    devices.c.serial_number == bindparam("serial"),
    _live,
)
_RENAME = (
    update(devices)
    .where(_mine)
    .values(name=bindparam("new_name"), updated_at=bindparam("now"))
    .returning(*_COLUMNS)
)
_MARK_PAIRED = (
    update(devices)
    .where(devices.c.id == bindparam("device_id"), _live)
    .values(paired_at=bindparam("now"), updated_at=bindparam("now"))
    .returning(devices.c.id)
)
_SOFT_DELETE = (
    update(devices)
    .where(_mine)
    .values(deleted_at=bindparam("now"), updated_at=bindparam("now"), remote_status="offline")
    .returning(devices.c.id)
)
_SET_USB_STATUS = (
    update(devices)
    .where(devices.c.id == bindparam("device_id"), _live)
    .values(status=bindparam("usb_status"), updated_at=bindparam("now"))
    .returning(devices.c.id)
)
_SET_USB_STATUS_BUSY = _SET_USB_STATUS.values(busy=bindparam("busy"))


@cache
def _insert_if_absent(dialect: str) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING`` for ``dialect`` (built once per dialect)."""
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        make(devices)
        .on_conflict_do_nothing(
            index_elements=[devices.c.org_id, devices.c.serial_number],
            index_where=_live,
        )
        .returning(*_RAW_COLUMNS)
    )


async def insert_device_if_absent(
    conn: AsyncConnection,
    *,
    device_id: uuid.UUID,
    org_id: uuid.UUID,
    owner_user_id: uuid.UUID,
    name: str,
    device_type: str | None,
    serial_number: str,
    now: datetime,
    paired_at: datetime | None = None,
) -> Device | None:
    """Insert a device unless the organisation has a live one with this serial (then None).

    ``ON CONFLICT DO NOTHING`` on the partial unique index: a racing insert waits
    for the other transaction instead of failing it.
    """
    values = {
        "id": device_id,
        "owner_user_id": owner_user_id,
        "org_id": org_id,
        "name": name,
        "device_type": device_type,
        "serial_number": serial_number,
        "remote_status": "offline",
        "status": "unknown",
        "created_at": now,
        "updated_at": now,
        "paired_at": paired_at,
    }
    row = (await conn.execute(_insert_if_absent(conn.dialect.name), values)).one_or_none()
    return _device(row) if row else None


async def get_device(
    source: Database | AsyncConnection,
    org_id: uuid.UUID,
    device_id: uuid.UUID,
    *,
    stale_before: datetime,
) -> Device | None:
    """The organisation's live device ``device_id`` (``stale_before``: see
    ``_read_status``); a hot read on the driver given the :class:`Database`, else on the
    connection."""
    return await _GET_HOT.one(source, device_id=device_id, org=org_id, stale_before=stale_before)


async def get_ref(
    conn: AsyncConnection, org_id: uuid.UUID, device_id: uuid.UUID
) -> DeviceRef | None:
    """The organisation's live device ``device_id`` without its status."""
    params = {"device_id": device_id, "org": org_id}
    row = (await conn.execute(_REF, params)).one_or_none()
    return _device_ref(row) if row else None


_OWNED_EVER = select(devices.c.id).where(
    devices.c.id == bindparam("device_id"), devices.c.org_id == bindparam("org")
)


async def owned_ever(conn: AsyncConnection, org_id: uuid.UUID, device_id: uuid.UUID) -> bool:
    """Whether the organisation has (or had: deleted ones count) the device ``device_id``."""
    params = {"device_id": device_id, "org": org_id}
    return (await conn.execute(_OWNED_EVER, params)).one_or_none() is not None


async def get_live_device_by_serial(
    conn: AsyncConnection, org_id: uuid.UUID, serial_number: str
) -> Device | None:
    """The organisation's live device with ``serial_number``, its status as stored (for the
    pairing's write path; reads shown to users go through ``Devices``)."""
    params = {"org": org_id, "serial": serial_number}
    row = (await conn.execute(_BY_SERIAL, params)).one_or_none()
    return _device(row) if row else None


async def list_devices(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    *,
    remote_status: RemoteStatus | None,
    status: UsbStatus | None,
    page: PageRequest,
    stale_before: datetime,
    where: ColumnElement[bool] | None = None,
) -> Page[Device]:
    """One page of the organisation's live devices, by (created_at, id); the filters are
    optional (``where``: more conditions over ``devices``, e.g. a tag selector's)."""
    stmt = select(*_COLUMNS).where(devices.c.org_id == org_id, _live)
    if where is not None:
        stmt = stmt.where(where)
    if remote_status is not None:
        stmt = stmt.where(_read_status == remote_status)
    if status is not None:
        stmt = stmt.where(devices.c.status == status)
    return await paginate(conn, stmt, _ORDER, page, _device, params={"stale_before": stale_before})


async def rename_device(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    device_id: uuid.UUID,
    *,
    name: str,
    now: datetime,
    stale_before: datetime,
) -> Device | None:
    """Rename the organisation's live device; None when there is no such device."""
    params: dict[str, Any] = {
        "device_id": device_id,
        "org": org_id,
        "new_name": name,
        "now": now,
        "stale_before": stale_before,
    }
    row = (await conn.execute(_RENAME, params)).one_or_none()
    return _device(row) if row else None


async def mark_paired(conn: AsyncConnection, device_id: uuid.UUID, now: datetime) -> bool:
    """Record that an agent paired the live device now; False if it was deleted meanwhile."""
    row = (await conn.execute(_MARK_PAIRED, {"device_id": device_id, "now": now})).one_or_none()
    return row is not None


async def soft_delete_device(
    conn: AsyncConnection, org_id: uuid.UUID, device_id: uuid.UUID, now: datetime
) -> bool:
    """Soft-delete the organisation's live device; False when there is no such device."""
    params = {"device_id": device_id, "org": org_id, "now": now}
    return (await conn.execute(_SOFT_DELETE, params)).one_or_none() is not None


async def set_usb_status(
    conn: AsyncConnection,
    device_id: uuid.UUID,
    status: UsbStatus,
    now: datetime,
    *,
    busy: bool | None = None,
    tcp_ports: list[int] | None = None,
) -> bool:
    """Store the agent-reported USB status (and busy flag, unless None; and the allowed TCP
    ports, unless None) of a live device."""
    params: dict[str, Any] = {"device_id": device_id, "usb_status": status, "now": now}
    if tcp_ports is not None:
        values: dict[str, Any] = {"tcp_ports": sorted(set(tcp_ports))}
        if busy is not None:
            values["busy"] = busy
        stmt = _SET_USB_STATUS.values(**values)
        return (await conn.execute(stmt, params)).one_or_none() is not None
    if busy is None:
        return (await conn.execute(_SET_USB_STATUS, params)).one_or_none() is not None
    params["busy"] = busy
    return (await conn.execute(_SET_USB_STATUS_BUSY, params)).one_or_none() is not None
