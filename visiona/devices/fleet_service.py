"""Use cases of the fleet: device tags (set, replace, read with the built-ins), selectors,
and the model each device runs.

Every function takes the connection of a unit of work opened at the edge and never
commits. Tag changes record ``device.tagged`` on the same connection; the model a
device runs is recorded by the deployment's success (same transaction) and by the
agent's own report (``POST /agent/status``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.service import Actor
from visiona.devices import fleet_repository as repository
from visiona.devices import selectors
from visiona.devices.repository import Device
from visiona.devices.selectors import Selector
from visiona.devices.service import require_device
from visiona.devices.tags import (
    InvalidTagError,
    builtin_tags,
    check_count,
    check_key,
    check_tags,
    visible_tags,
)
from visiona.kit.clock import utcnow
from visiona.kit.database import Database

_LOGGER = logging.getLogger(__name__)


def parse_selector(text: str | None) -> Selector | None:
    """The parsed selector (None when none was given; 400 ``invalid_selector`` when bad)."""
    if text is None:
        return None
    return selectors.parse(text)


async def tags_of(
    conn: AsyncConnection, found: Sequence[Device]
) -> dict[uuid.UUID, dict[str, str]]:
    """The tags each device shows (its user tags and the built-ins), in one query."""
    user = await repository.tags_of(conn, (device.id for device in found))
    return {d.id: visible_tags(d.device_type, user.get(d.id, {})) for d in found}


async def tags_of_one(source: Database | AsyncConnection, device: Device) -> dict[str, str]:
    """The tags ``device`` shows; a hot read given the :class:`Database`."""
    return visible_tags(device.device_type, await repository.tags_of_device(source, device.id))


async def replace_tags(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    device_id: uuid.UUID,
    tags: Mapping[str, str],
    *,
    actor: Actor,
) -> None:
    """Make ``tags`` the device's user tags (404 when not the organisation's; 422 ``invalid_tag``
    / ``too_many_tags``, 400 ``reserved_tag``; built-ins with their own value are ignored)."""

    def apply(_before: dict[str, str], builtins: dict[str, str]) -> dict[str, str]:
        after = check_tags(tags, builtins)
        check_count(after)
        return after

    await _change(conn, org_id, device_id, apply, actor)


async def change_tags(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    device_id: uuid.UUID,
    *,
    set_tags: Mapping[str, str],
    remove: Iterable[str],
    actor: Actor,
) -> None:
    """Set ``set_tags`` and remove the keys ``remove`` (absent keys are no-ops) on the
    organisation's device; the same errors as :func:`replace_tags`, and a key both set and
    removed is a 422 ``invalid_tag``."""
    removed = list(dict.fromkeys(remove))
    for key in removed:
        check_key(key)
        if key in set_tags:
            raise InvalidTagError(f"Tag {key!r} is both set and removed.")

    def apply(before: dict[str, str], builtins: dict[str, str]) -> dict[str, str]:
        after = {k: v for k, v in before.items() if k not in removed}
        after.update(check_tags(set_tags, builtins))
        check_count(after)
        return after

    await _change(conn, org_id, device_id, apply, actor)


async def _change(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    device_id: uuid.UUID,
    compute: Callable[[dict[str, str], dict[str, str]], dict[str, str]],
    actor: Actor,
) -> None:
    """Lock the organisation's device, compute its new user tags from the current ones (and its
    built-ins), write the difference and record ``device.tagged`` (when anything changed)."""
    device = await require_device(conn, org_id, device_id)
    await repository.lock_device(conn, device_id)
    before = await repository.tags_of_device(conn, device_id)
    after = compute(before, builtin_tags(device.device_type))
    upsert = {k: v for k, v in after.items() if before.get(k) != v}
    removed = sorted(k for k in before if k not in after)
    if not upsert and not removed:
        return
    await repository.write_changes(conn, device_id, upsert=upsert, remove=removed, now=utcnow())
    await audit.record(
        conn,
        "device.tagged",
        actor=actor,
        org_id=org_id,
        target_id=device_id,
        device_id=device_id,
        detail={"set": dict(sorted(upsert.items())), "removed": removed},
    )


async def record_current_model(
    conn: AsyncConnection,
    device_id: uuid.UUID,
    model_id: uuid.UUID,
    sha256: str,
    now: datetime | None = None,
) -> bool:
    """Record that the device runs ``model_id`` (``sha256``) now, the one before becoming
    its previous model; False when it already ran exactly this (nothing changes)."""
    changed = await repository.set_current_model(
        conn, device_id, model_id, sha256.lower(), now or utcnow()
    )
    if changed:
        _LOGGER.info("device %s runs model %s now", device_id, model_id)
    return changed
