"""Use cases for devices and the agent's pair exchange and status report.

Every function takes the connection of a unit of work opened at the edge and never
commits. Tokens (pairing, session) belong to :mod:`visiona.tokens`; this feature
reaches them through that feature's service. Each change records its audit event
(:mod:`visiona.audit`) on the same connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.service import Actor
from visiona.devices import repository
from visiona.devices.fleet_repository import selector_clause
from visiona.devices.repository import Device, DeviceRef
from visiona.devices.selectors import Selector
from visiona.kit.clock import utcnow
from visiona.kit.database import Database
from visiona.kit.errors import ConflictError, NotFoundError, RateLimitedError
from visiona.kit.pagination import Page, PageRequest
from visiona.kit.ratelimit import RateLimiter
from visiona.kit.settings import Settings
from visiona.tokens import service as tokens
from visiona.tokens.service import DeviceIdentity
from visiona.wire import RemoteStatus, UsbStatus

# -- devices ------------------------------------------------------------------


class Devices:
    """Devices as their owner reads them, with the effective ``remote_status``.

    A device whose tunnel has not been seen for three tunnel status intervals reads
    ``offline`` whatever is stored (its node may have crashed without writing it). Every
    read of a :class:`Device` goes through here (the repository requires the cutoff),
    so no reader can forget the rule. Built once by the composition root from settings
    and handed out by :mod:`visiona.devices.dependencies`.
    """

    __slots__ = ("_window",)

    def __init__(self, status_interval: float) -> None:
        """Devices not seen for three ``status_interval`` seconds read ``offline``."""
        self._window = timedelta(seconds=3 * status_interval)

    @classmethod
    def from_settings(cls, settings: Settings) -> Devices:
        """The rule for ``settings.tunnel_status_interval``."""
        return cls(settings.tunnel_status_interval)

    def stale_before(self, now: datetime | None = None) -> datetime:
        """Devices not seen since this instant read ``offline``.

        The tunnel refreshes ``last_seen_at`` of its connected devices every interval; a
        node that crashed stops doing so, and its devices fall back to offline.
        """
        return (now or utcnow()) - self._window

    async def list(
        self,
        conn: AsyncConnection,
        org_id: uuid.UUID,
        *,
        remote_status: RemoteStatus | None = None,
        status: UsbStatus | None = None,
        page: PageRequest,
        selector: Selector | None = None,
    ) -> Page[Device]:
        """The organisation's live devices in creation order, one page at a time (only
        those ``selector`` selects, when given)."""
        return await repository.list_devices(
            conn,
            org_id,
            remote_status=remote_status,
            status=status,
            page=page,
            stale_before=self.stale_before(),
            where=None if selector is None else selector_clause(selector),
        )

    async def get(
        self, source: Database | AsyncConnection, org_id: uuid.UUID, device_id: uuid.UUID
    ) -> Device:
        """The organisation's live device; another organisation's or a deleted one is a 404
        (given the :class:`Database`: a hot read, no unit of work)."""
        device = await repository.get_device(
            source, org_id, device_id, stale_before=self.stale_before()
        )
        if device is None:
            raise NotFoundError("Device not found.")
        return device

    async def rename(
        self,
        conn: AsyncConnection,
        org_id: uuid.UUID,
        device_id: uuid.UUID,
        name: str,
        *,
        actor: Actor,
    ) -> Device:
        """Rename the organisation's device (404 when not its); the answer reads like a GET."""
        before = await repository.get_ref(conn, org_id, device_id)
        now = utcnow()
        device = None
        if before is not None:
            device = await repository.rename_device(
                conn,
                org_id,
                device_id,
                name=name,
                now=now,
                stale_before=self.stale_before(now),
            )
        if before is None or device is None:
            raise NotFoundError("Device not found.")
        if before.name != name:
            await audit.record(
                conn,
                "device.renamed",
                actor=actor,
                org_id=org_id,
                target_id=device_id,
                device_id=device_id,
                detail={"from": before.name, "to": name},
            )
        return device


async def require_device(
    conn: AsyncConnection, org_id: uuid.UUID, device_id: uuid.UUID
) -> DeviceRef:
    """The organisation's live device without its status (ownership, type); else a 404."""
    device = await repository.get_ref(conn, org_id, device_id)
    if device is None:
        raise NotFoundError("Device not found.")
    return device


async def require_owned_ever(
    conn: AsyncConnection, org_id: uuid.UUID, device_id: uuid.UUID
) -> None:
    """404 unless the device is (or was, before its unpair) the organisation's: its history
    stays."""
    if not await repository.owned_ever(conn, org_id, device_id):
        raise NotFoundError("Device not found.")


async def create_device(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    owner_user_id: uuid.UUID,
    *,
    name: str,
    serial_number: str,
    device_type: str | None,
) -> Device:
    """Register a device in ``org_id`` (``owner_user_id`` creates it); a live device of the
    organisation with the same serial is a 409."""
    now = utcnow()
    device = await repository.insert_device_if_absent(
        conn,
        device_id=uuid.uuid4(),
        org_id=org_id,
        owner_user_id=owner_user_id,
        name=name,
        device_type=device_type,
        serial_number=serial_number,
        now=now,
    )
    if device is None:
        raise ConflictError("A device with this serial number is already registered.")
    await record_created(conn, device, Actor.user(owner_user_id), "api")
    return device


async def record_created(conn: AsyncConnection, device: Device, actor: Actor, via: str) -> None:
    """Record ``device.created`` for a new device (``via``: api, pairing, enrollment)."""
    await audit.record(
        conn,
        "device.created",
        actor=actor,
        owner_id=device.owner_user_id,
        org_id=device.org_id,
        target_id=device.id,
        device_id=device.id,
        detail={"via": via, "serial_number": device.serial_number},
    )


async def ensure_device(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    owner_user_id: uuid.UUID,
    *,
    name: str,
    serial_number: str,
    device_type: str | None,
    now: datetime,
    paired_at: datetime | None = None,
) -> tuple[Device, bool]:
    """The organisation's live device with this serial, created when missing (by
    ``owner_user_id``); and whether it was.

    ``paired_at`` marks an existing device paired again (a device unpaired meanwhile is
    a 409, and the caller's whole unit of work rolls back).
    """
    device = await repository.insert_device_if_absent(
        conn,
        device_id=uuid.uuid4(),
        org_id=org_id,
        owner_user_id=owner_user_id,
        name=name,
        device_type=device_type,
        serial_number=serial_number,
        now=now,
        paired_at=paired_at,
    )
    if device is not None:
        return device, True
    device = await repository.get_live_device_by_serial(conn, org_id, serial_number)
    if device is None or (
        paired_at is not None and not await repository.mark_paired(conn, device.id, paired_at)
    ):
        raise ConflictError("The device was unpaired while pairing; try again.")
    return device, False


@dataclass(frozen=True, slots=True)
class Unpaired:
    """What an unpair revoked (the tokens' public ids)."""

    device_id: uuid.UUID
    pairing_tokens: list[uuid.UUID]
    session_tokens: list[uuid.UUID]


async def unpair_device(
    conn: AsyncConnection, org_id: uuid.UUID, device_id: uuid.UUID, *, actor: Actor
) -> Unpaired:
    """Soft-delete the device and revoke every pairing and session token bound to it.

    All steps run on ``conn``, so they commit or roll back together; the caller
    closes the live tunnel (the revocation hooks) only after the commit.
    """
    now = utcnow()
    if not await repository.soft_delete_device(conn, org_id, device_id, now):
        raise NotFoundError("Device not found.")
    revoked = await tokens.revoke_all_of_device(conn, device_id, now)
    await audit.record(
        conn,
        "device.unpaired",
        actor=actor,
        org_id=org_id,
        target_id=device_id,
        device_id=device_id,
        detail={
            "revoked_pairing_tokens": [str(i) for i in revoked.pairing_tokens],
            "revoked_session_tokens": [str(i) for i in revoked.session_tokens],
        },
    )
    return Unpaired(
        device_id=device_id,
        pairing_tokens=revoked.pairing_tokens,
        session_tokens=revoked.session_tokens,
    )


# -- the agent ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paired:
    """The outcome of a pair exchange."""

    device_id: uuid.UUID
    owner_user_id: uuid.UUID
    org_id: uuid.UUID
    session_token: str
    session_token_id: uuid.UUID
    expires_at: datetime
    new_device: bool


async def check_pair_rate(limiter: RateLimiter, settings: Settings, address: str) -> None:
    """Count a pair attempt per client address; over the limit → 429."""
    hit = await limiter.hit(
        f"pair:addr:{address}", settings.pair_rate_limit, settings.pair_rate_window
    )
    if not hit.allowed:
        raise RateLimitedError(hit.retry_after, "Too many pairing attempts; try again later.")


async def pair(
    conn: AsyncConnection,
    settings: Settings,
    *,
    pairing_token: str,
    serial_number: str,
    device_type: str,
    name: str,
) -> Paired:
    """Exchange a pairing token for a device and a session token, all on ``conn``.

    1. consume the token with one conditional UPDATE (the winner of a race takes
       it; every other caller, and every bad token, gets the same 401);
    2. re-use the organisation's live device with this serial, or create it (the
       token's organisation; its creator creates the device);
    3. bind the token to the device, set ``paired_at``, issue a session token whose
       ``parent_token_hash`` is the pairing token's hash;
    4. record the events: ``device.created`` (a new device), ``device.paired``,
       ``pairing_token.used``, ``session_token.issued``, the device as actor.
    """
    now = utcnow()
    used = await tokens.consume_pairing_token(conn, pairing_token, now)
    owner = used.owner_user_id
    device, new_device = await ensure_device(
        conn,
        used.org_id,
        owner,
        name=name,
        serial_number=serial_number,
        device_type=device_type,
        now=now,
        paired_at=now,
    )
    actor = Actor.device(device.id)
    if new_device:
        await record_created(conn, device, actor, "pairing")
    await audit.record(
        conn,
        "device.paired",
        actor=actor,
        owner_id=owner,
        org_id=used.org_id,
        target_id=device.id,
        device_id=device.id,
        detail={"pairing_token_id": str(used.public_id), "serial_number": serial_number},
    )
    session = await tokens.issue_session_token(
        conn, settings, pairing=used, device_id=device.id, now=now
    )
    return Paired(
        device_id=device.id,
        owner_user_id=owner,
        org_id=used.org_id,
        session_token=session.token,
        session_token_id=session.public_id,
        expires_at=session.expires_at,
        new_device=new_device,
    )


async def report_usb_status(
    conn: AsyncConnection,
    device: DeviceIdentity,
    usb_status: UsbStatus,
    busy: bool | None = None,
    tcp_ports: list[int] | None = None,
) -> None:
    """Store the USB status (and the busy flag and allowed TCP ports, when given) the agent
    reports for its device."""
    if not await repository.set_usb_status(
        conn, device.device_id, usb_status, utcnow(), busy=busy, tcp_ports=tcp_ports
    ):
        raise tokens.agent_unauthorized()  # the device went away since authentication
