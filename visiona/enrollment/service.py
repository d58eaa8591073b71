"""Use cases of enrollment keys: create, list, revoke, and the agent's enrolment.

Every function takes the connection of a unit of work opened at the edge and never
commits. An enrolment is one transaction: the use is counted (a conditional UPDATE),
the device created or re-used (same owner and serial), the key's tags applied, its
session token issued and ``device.enrolled`` recorded; any failure rolls all back, so a
refused enrolment never spends a use.

Device names: the key's ``name_template`` with the placeholders ``{serial}`` (the
dongle's serial number), ``{type}`` (the device type the agent reports) and ``{n}`` (the
key's use number, 1-based); without a template, the agent's ``name``, else the serial.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.service import Actor
from visiona.devices import fleet_repository
from visiona.devices import service as devices
from visiona.devices.tags import builtin_tags, check_count, check_tags
from visiona.enrollment import repository
from visiona.enrollment.repository import EnrollmentKey
from visiona.kit.clock import utcnow
from visiona.kit.errors import NotFoundError, RateLimitedError, ValidationFailedError
from visiona.kit.pagination import Page, PageRequest
from visiona.kit.ratelimit import RateLimiter
from visiona.kit.settings import Settings
from visiona.kit.tokens import ENROLLMENT_PREFIX, has_prefix, hash_token, new_token
from visiona.tokens import service as tokens

_LOGGER = logging.getLogger(__name__)
#: The placeholders a name template may use.
PLACEHOLDERS = ("serial", "type", "n")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
MAX_NAME_LENGTH = 200


def _invalid(field: str, message: str) -> ValidationFailedError:
    return ValidationFailedError(
        [{"loc": ["body", field], "message": message, "type": "value_error"}]
    )


def check_template(template: str) -> None:
    """422 unless every ``{…}`` of ``template`` is a known placeholder (no other braces)."""
    for name in _PLACEHOLDER.findall(template):
        if name not in PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            raise _invalid("name_template", f"unknown placeholder {{{name}}}; use {known}")
    if "{" in _PLACEHOLDER.sub("", template) or "}" in _PLACEHOLDER.sub("", template):
        raise _invalid("name_template", "unbalanced brace")


def render_name(template: str, *, serial: str, device_type: str, n: int) -> str:
    """The device name ``template`` gives (placeholders replaced; at most 200 characters)."""
    values = {"serial": serial, "type": device_type, "n": str(n)}
    name = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template).strip()
    return (name or serial)[:MAX_NAME_LENGTH]


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key: its record and its plaintext (shown once)."""

    record: EnrollmentKey
    key: str


async def create_key(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    created_by: uuid.UUID,
    *,
    actor: Actor,
    name: str,
    max_uses: int,
    expires_in_hours: int,
    tags: dict[str, str],
    name_template: str | None,
) -> IssuedKey:
    """Issue a ``vek_…`` key (422 ``invalid_tag``/``too_many_tags`` or a bad template,
    400 ``reserved_tag``); records ``enrollment_key.created``."""
    checked = check_tags(tags, {})
    check_count(checked)
    if name_template is not None:
        check_template(name_template)
    plaintext = new_token(ENROLLMENT_PREFIX)
    now = utcnow()
    record = await repository.insert_key(
        conn,
        key_hash=hash_token(plaintext),
        org_id=org_id,
        owner_user_id=created_by,
        name=name,
        max_uses=max_uses,
        tags=checked,
        name_template=name_template,
        now=now,
        expires_at=now + timedelta(hours=expires_in_hours),
    )
    await audit.record(
        conn,
        "enrollment_key.created",
        actor=actor,
        org_id=org_id,
        target_id=record.id,
        detail={
            "name": name,
            "max_uses": max_uses,
            "expires_at": record.expires_at.isoformat(),
            "tag_keys": sorted(checked),
        },
    )
    return IssuedKey(record=record, key=plaintext)


async def list_keys(
    conn: AsyncConnection, org_id: uuid.UUID, page: PageRequest
) -> Page[EnrollmentKey]:
    """The organisation's keys (revoked, expired and used-up ones too), oldest first."""
    return await repository.list_keys(conn, org_id, page)


async def revoke_key(
    conn: AsyncConnection, org_id: uuid.UUID, key_id: uuid.UUID, *, actor: Actor
) -> None:
    """Revoke the organisation's key (idempotent; another organisation's or unknown →
    404); records ``enrollment_key.revoked``. Devices it enrolled stay paired."""
    record = await repository.revoke_key(conn, org_id, key_id, utcnow())
    if record is None:
        raise NotFoundError("Enrollment key not found.")
    await audit.record(
        conn,
        "enrollment_key.revoked",
        actor=actor,
        org_id=org_id,
        target_id=key_id,
    )


async def check_enroll_rate(
    limiter: RateLimiter, settings: Settings, address: str, enrollment_key: str
) -> None:
    """Count an enrolment attempt per client address (the pair limit) and per key (429)."""
    hit = await limiter.hit(
        f"enroll:addr:{address}", settings.pair_rate_limit, settings.pair_rate_window
    )
    if hit.allowed:
        # per key: by a prefix of its hash (the key itself is never a Redis key)
        key_id = hash_token(enrollment_key)[:32]
        hit = await limiter.hit(
            f"enroll:key:{key_id}", settings.enroll_rate_limit, settings.pair_rate_window
        )
    if not hit.allowed:
        raise RateLimitedError(hit.retry_after, "Too many enrolment attempts; try again later.")


@dataclass(frozen=True, slots=True)
class Enrolled:
    """The outcome of an enrolment (the same shape as a pair exchange's)."""

    device_id: uuid.UUID
    org_id: uuid.UUID
    key_id: uuid.UUID
    session_token: str
    session_token_id: uuid.UUID
    expires_at: datetime
    new_device: bool


async def enroll(
    conn: AsyncConnection,
    settings: Settings,
    *,
    enrollment_key: str,
    serial_number: str,
    device_type: str,
    name: str | None,
) -> Enrolled:
    """Enrol a PC with a reusable key, all on ``conn`` (any bad key: the same 401).

    1. count the use (one conditional UPDATE: unexpired, unrevoked, ``uses < max_uses``);
    2. re-use the key's organisation's live device with this serial, or create it (named by the
       key's template, else ``name``, else the serial);
    3. apply the key's tags (on top of the device's own);
    4. issue a session token and record ``device.created`` (a new device) and
       ``device.enrolled``, the device as actor.
    """
    if not has_prefix(enrollment_key, ENROLLMENT_PREFIX):
        raise tokens.agent_unauthorized()
    now = utcnow()
    key = await repository.use_key(conn, hash_token(enrollment_key), now)
    if key is None:
        raise tokens.agent_unauthorized()
    owner, org_id = key.owner_user_id, key.org_id  # the device joins the key's organisation
    if key.name_template:
        device_name = render_name(
            key.name_template, serial=serial_number, device_type=device_type, n=key.uses
        )
    else:
        device_name = name or serial_number
    device, new_device = await devices.ensure_device(
        conn,
        org_id,
        owner,
        name=device_name,
        serial_number=serial_number,
        device_type=device_type,
        now=now,
        paired_at=now,
    )
    applied = {str(k): str(v) for k, v in key.tags.items()}
    if applied:
        await fleet_repository.lock_device(conn, device.id)
        before = await fleet_repository.tags_of_device(conn, device.id)
        kept = {k: v for k, v in applied.items() if k not in builtin_tags(device.device_type)}
        check_count({**before, **kept})
        await fleet_repository.write_changes(conn, device.id, upsert=kept, remove=(), now=now)
    if new_device:
        await devices.record_created(conn, device, Actor.device(device.id), "enrollment")
    session = await tokens.issue_enrolled_session(
        conn, settings, org_id=org_id, owner_user_id=owner, device_id=device.id, now=now
    )
    await audit.record(
        conn,
        "device.enrolled",
        actor=Actor.device(device.id),
        org_id=org_id,
        owner_id=owner,
        target_id=device.id,
        device_id=device.id,
        detail={
            "enrollment_key_id": str(key.id),
            "serial_number": serial_number,
            "tag_keys": sorted(applied),
            "use": key.uses,
        },
    )
    return Enrolled(
        device_id=device.id,
        org_id=org_id,
        key_id=key.id,
        session_token=session.token,
        session_token_id=session.public_id,
        expires_at=session.expires_at,
        new_device=new_device,
    )
