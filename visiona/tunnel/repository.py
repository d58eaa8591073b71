"""SQL of the tunnel: the devices' remote status columns. Takes a connection; never commits.

Statements are built once, here, with bind parameters. Every status write carries the
tunnel's epoch (``devices.tunnel_epoch``, migration 0006): ``online`` applies only
over an older epoch (newest wins), ``reconnecting``/``offline`` and the batched
``last_seen_at`` only to the same epoch — a late write of an old tunnel misses.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from sqlalchemy import BigInteger, any_, bindparam, case, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.kit.schema import UTCDateTime, devices
from visiona.wire import RemoteStatus

_live = devices.c.deleted_at.is_(None)
_now = bindparam("now", type_=UTCDateTime())
_one = (devices.c.id == bindparam("device_id")) & _live
_epoch = bindparam("epoch", type_=BigInteger())
_CONNECTED = (
    update(devices)
    .where(_one, or_(devices.c.tunnel_epoch.is_(None), devices.c.tunnel_epoch < _epoch))
    .values(
        remote_status="online",
        last_connected_at=_now,
        last_seen_at=_now,
        # a report of the agent since the tunnel came up (it may land before the batch,
        # on any node: it sets updated_at) is kept; else what this node heard, or false
        busy=case((devices.c.updated_at >= _now, devices.c.busy), else_=bindparam("busy")),
        tunnel_epoch=_epoch,
    )
)
_SET_STATUS = (
    update(devices)
    .where(_one, devices.c.tunnel_epoch == _epoch)
    .values(remote_status=bindparam("new_status"))
)
_SEEN = (
    update(devices)
    .where(
        devices.c.id.in_(bindparam("device_ids", expanding=True)),
        devices.c.tunnel_epoch.in_(bindparam("epochs", expanding=True)),
        _live,
    )
    .values(last_seen_at=_now, remote_status="online")
)
# PostgreSQL: the same with two array parameters, so the statement is prepared once
# whatever the batch's size (an expanding IN renders, and PostgreSQL plans, one
# parameter per device: 10,000 every interval on a full node).
_SEEN_ARRAYS = (
    update(devices)
    .where(
        devices.c.id == any_(bindparam("device_ids", type_=postgresql.ARRAY(devices.c.id.type))),
        devices.c.tunnel_epoch == any_(bindparam("epochs", type_=postgresql.ARRAY(BigInteger()))),
        _live,
    )
    .values(last_seen_at=_now, remote_status="online")
)
_ALL_OFFLINE = (
    update(devices)
    .where(devices.c.remote_status != "offline")
    .values(remote_status="offline")
    .returning(devices.c.id, devices.c.owner_user_id, devices.c.org_id)
)


async def mark_connected(
    conn: AsyncConnection, rows: Sequence[tuple[uuid.UUID, int, datetime, bool]]
) -> None:
    """Tunnels came up, ``(device id, epoch, when, busy)`` each, in one executemany:
    ``online``, connected and seen then, ``busy`` as the agent said since (false until it
    says) — unless a newer tunnel's epoch is already written."""
    if rows:
        await conn.execute(
            _CONNECTED,
            [{"device_id": d, "epoch": e, "now": when, "busy": b} for d, e, when, b in rows],
        )


async def set_remote_status(
    conn: AsyncConnection, rows: Sequence[tuple[uuid.UUID, int, RemoteStatus]]
) -> None:
    """Status changes (``reconnecting``, ``offline``...), ``(device id, epoch, status)``
    each, in one executemany; each applies only while its tunnel's epoch is the device's."""
    if rows:
        await conn.execute(
            _SET_STATUS,
            [{"device_id": d, "epoch": e, "new_status": status} for d, e, status in rows],
        )


async def mark_seen(conn: AsyncConnection, seen: Mapping[uuid.UUID, int], now: datetime) -> None:
    """One statement for the whole batch: these devices (device id → tunnel epoch) were
    seen, and are online, at ``now`` — those whose epoch is still theirs."""
    if not seen:
        return
    statement = _SEEN_ARRAYS if conn.dialect.name == "postgresql" else _SEEN
    await conn.execute(
        statement, {"device_ids": list(seen), "epochs": list(set(seen.values())), "now": now}
    )


async def mark_all_offline(
    conn: AsyncConnection,
) -> list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]:
    """At start-up: every device still marked connected is offline (this node holds none yet).

    Returns the ``(device id, owner id, organisation id)`` of each device marked.
    """
    result = await conn.execute(_ALL_OFFLINE)
    return [(row[0], row[1], row[2]) for row in result]


async def connected_device_ids(conn: AsyncConnection) -> list[uuid.UUID]:
    """Devices whose remote status is not ``offline`` (a cluster node's start-up reset)."""
    rows = await conn.execute(select(devices.c.id).where(devices.c.remote_status != "offline"))
    return [row[0] for row in rows]


async def mark_offline(
    conn: AsyncConnection, device_ids: Collection[uuid.UUID]
) -> list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]:
    """Mark these devices offline; the ``(device id, owner id, organisation id)`` of each
    that was not."""
    if not device_ids:
        return []
    result = await conn.execute(
        update(devices)
        .where(devices.c.id.in_(list(device_ids)), devices.c.remote_status != "offline")
        .values(remote_status="offline")
        .returning(devices.c.id, devices.c.owner_user_id, devices.c.org_id)
    )
    return [(row[0], row[1], row[2]) for row in result]


async def busy_flags(
    conn: AsyncConnection, device_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, bool]:
    """The stored ``busy`` flag of these devices (a cluster node refreshing its tunnels)."""
    if not device_ids:
        return {}
    rows = await conn.execute(
        select(devices.c.id, devices.c.busy).where(devices.c.id.in_(list(device_ids)))
    )
    return {row[0]: bool(row[1]) for row in rows}
