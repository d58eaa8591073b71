"""Demo data for development: a demo user, a KL520 device, a model record and a pairing token.

Run by ``visiona seed-demo`` and by ``visiona serve`` when ``VISIONA_SEED_DEMO_DATA``
is true. Idempotent: a second run finds the user, device and model it made before
and only issues a new pairing token. The token's plaintext is returned for the
command to print on stdout (the one sanctioned place a token is shown outside its
API response); it is never logged. Never enable this in production.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.auth import repository as users
from visiona.auth.passwords import hash_password
from visiona.devices import repository
from visiona.kit.clock import utcnow
from visiona.kit.database import Database
from visiona.kit.errors import ConflictError
from visiona.kit.settings import Settings
from visiona.kit.tokens import PAIRING_PREFIX, hash_token, new_token

_LOGGER = logging.getLogger(__name__)

DEMO_USER_ID = uuid.UUID("00000000-0000-0000-0000-0000000000d3")
DEMO_EMAIL = "demo@visiona.local"
DEMO_USER_NAME = "Demo User (seeded)"
DEMO_DEVICE_NAME = "Demo KL520 (seeded)"
DEMO_DEVICE_TYPE = "kl520"
DEMO_SERIAL = "DEMO-SN-001"
DEMO_MODEL_NAME = "YOLOv5 Face"
DEMO_MODEL_CHIP = "kl520"
DEMO_PAIRING_TTL = timedelta(hours=24)

WARNING = (
    "WARNING: demo data is for DEVELOPMENT ONLY. It creates a known account "
    f"({DEMO_EMAIL}) and prints a pairing token. Never enable VISIONA_SEED_DEMO_DATA "
    "or run `visiona seed-demo` against a production database."
)


@dataclass(frozen=True)
class DemoData:
    """What the seed left in the database; ``password`` is set only when it made the user."""

    user_id: uuid.UUID
    email: str
    password: str | None
    device_id: uuid.UUID
    device_created: bool
    model_id: uuid.UUID
    model_created: bool
    pairing_token: str
    pairing_expires_at: datetime


async def seed_demo(conn: AsyncConnection) -> DemoData:
    """Create whatever demo rows are missing, and a new 24 h pairing token, on ``conn``."""
    now = utcnow()
    password = await _ensure_user(conn, now)
    device = await repository.insert_device_if_absent(
        conn,
        device_id=uuid.uuid4(),
        owner_user_id=DEMO_USER_ID,
        name=DEMO_DEVICE_NAME,
        device_type=DEMO_DEVICE_TYPE,
        serial_number=DEMO_SERIAL,
        now=now,
    )
    device_created = device is not None
    if device is None:
        device = await repository.get_live_device_by_serial(conn, DEMO_USER_ID, DEMO_SERIAL)
        assert device is not None  # noqa: S101 - the insert found it live in this transaction
    model_id = await repository.find_live_model(
        conn, DEMO_USER_ID, DEMO_MODEL_NAME, DEMO_MODEL_CHIP
    )
    model_created = model_id is None
    if model_id is None:
        model_id = uuid.uuid4()
        await repository.insert_model_record(
            conn,
            model_id=model_id,
            owner_user_id=DEMO_USER_ID,
            name=DEMO_MODEL_NAME,
            target_chip=DEMO_MODEL_CHIP,
            source="builtin",
            labels=["face"],
            now=now,
        )
    token = new_token(PAIRING_PREFIX)
    expires_at = now + DEMO_PAIRING_TTL
    await repository.insert_pairing_token(
        conn, token_hash=hash_token(token), user_id=DEMO_USER_ID, now=now, expires_at=expires_at
    )
    return DemoData(
        user_id=DEMO_USER_ID,
        email=DEMO_EMAIL,
        password=password,
        device_id=device["id"],
        device_created=device_created,
        model_id=model_id,
        model_created=model_created,
        pairing_token=token,
        pairing_expires_at=expires_at,
    )


async def _ensure_user(conn: AsyncConnection, now: datetime) -> str | None:
    """Create the demo user with a random password (returned), or None if it exists."""
    if await users.get_by_id(conn, DEMO_USER_ID) is not None:
        return None
    if await users.get_by_email(conn, DEMO_EMAIL) is not None:
        raise ConflictError(f"{DEMO_EMAIL} already belongs to another account.")
    password = secrets.token_urlsafe(12)
    await users.insert_user(
        conn,
        user_id=DEMO_USER_ID,
        email=DEMO_EMAIL,
        name=DEMO_USER_NAME,
        password_hash=await hash_password(password),
        now=now,
    )
    return password


async def run_seed_demo(settings: Settings) -> DemoData:
    """Seed the database of ``settings`` in one transaction, with an engine of its own."""
    db = Database(settings.build_engine(), settings.database_target)
    try:
        async with db.transaction() as conn:
            data = await seed_demo(conn)
    finally:
        await db.dispose()
    _LOGGER.warning(
        "demo data seeded in %s (user %s, device %s, model %s): for development only",
        settings.database_target,
        data.user_id,
        data.device_id,
        data.model_id,
    )
    return data


def report(data: DemoData) -> str:
    """The text a developer needs: sign-in, ids, and the pairing token for the local agent."""
    if data.password is not None:
        sign_in = f"password: {data.password}   (shown once; not stored in plaintext)"
    else:
        sign_in = "password: unchanged (the demo user already existed)"
    created = {True: "created", False: "already there"}
    return "\n".join(
        [
            f"demo user   {data.email}  id {data.user_id}",
            f"            {sign_in}",
            f"demo device {DEMO_DEVICE_NAME} serial {DEMO_SERIAL}  id {data.device_id}"
            f"  ({created[data.device_created]})",
            f"demo model  {DEMO_MODEL_NAME} ({DEMO_MODEL_CHIP})  id {data.model_id}"
            f"  ({created[data.model_created]})",
            f"pairing token (24 h, for the local agent): {data.pairing_token}",
            f"  expires {data.pairing_expires_at.isoformat()}",
            f"  visiona agent --server URL --token {data.pairing_token} --forward HOST:PORT",
        ]
    )
