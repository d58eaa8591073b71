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
from visiona.devices import service as devices
from visiona.kit.clock import utcnow
from visiona.kit.database import Database
from visiona.kit.errors import ConflictError
from visiona.kit.settings import Settings
from visiona.models import repository as models
from visiona.models.repository import ModelWrite
from visiona.models.schemas import ModelSource
from visiona.orgs import service as orgs
from visiona.tokens import service as tokens

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
    org_id = await orgs.personal_org_id(conn, DEMO_USER_ID)
    if org_id is None:  # a demo user made before organisations existed, and not migrated
        org_id = (await orgs.create_personal_org(conn, DEMO_USER_ID, DEMO_USER_NAME, now)).id
    device, device_created = await devices.ensure_device(
        conn,
        org_id,
        DEMO_USER_ID,
        name=DEMO_DEVICE_NAME,
        device_type=DEMO_DEVICE_TYPE,
        serial_number=DEMO_SERIAL,
        now=now,
    )
    model_id = await models.find_live_by_name(conn, org_id, DEMO_MODEL_NAME, DEMO_MODEL_CHIP)
    model_created = model_id is None
    if model_id is None:
        model_id = uuid.uuid4()
        await models.upsert(
            conn,
            ModelWrite(
                id=model_id,
                owner_user_id=DEMO_USER_ID,
                org_id=org_id,
                name=DEMO_MODEL_NAME,
                target_chip=DEMO_MODEL_CHIP,
                file_size=0,
                sha256=None,
                source=ModelSource.BUILTIN,
                labels=("face",),
                storage_key=None,
                created_at=now,
                updated_at=now,
                uploaded_at=None,
            ),
        )
    ttl = int(DEMO_PAIRING_TTL.total_seconds())
    issued = await tokens.create_pairing_token(conn, org_id, DEMO_USER_ID, ttl, now=now)
    return DemoData(
        user_id=DEMO_USER_ID,
        email=DEMO_EMAIL,
        password=password,
        device_id=device.id,
        device_created=device_created,
        model_id=model_id,
        model_created=model_created,
        pairing_token=issued.token,
        pairing_expires_at=issued.expires_at,
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
    await orgs.create_personal_org(conn, DEMO_USER_ID, DEMO_USER_NAME, now)
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
