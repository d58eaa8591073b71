"""The models repository on SQLite and PostgreSQL (schema built by the migrations)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from tests.support.api import User, signup
from tests.support.models import runtime_of
from visiona.kit.pagination import PageRequest, encode_cursor
from visiona.kit.schema import models
from visiona.models import repository
from visiona.models.repository import ModelWrite
from visiona.models.schemas import ModelSource


def values(model_id: uuid.UUID, user: User, moment: datetime, **extra: Any) -> ModelWrite:
    """A full row of the models table (made by ``user`` in their personal organisation)."""
    owner = uuid.UUID(user.id)
    row = ModelWrite(
        id=model_id,
        owner_user_id=owner,
        org_id=uuid.UUID(user.org_id),
        name="m",
        target_chip="kl520",
        labels=("person", "car"),
        file_size=10,
        sha256="0" * 64,
        source=ModelSource.BUILTIN,
        storage_key=f"models/{owner}/{model_id}/{'0' * 64}.nef",
        created_at=moment,
        updated_at=moment,
        uploaded_at=moment,
    )
    return replace(row, **extra)


async def test_upsert_keeps_created_at_and_never_touches_another_owner(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user, intruder = await signup(client), await signup(client)
    owner, other = uuid.UUID(user.org_id), uuid.UUID(intruder.org_id)
    model_id = uuid.uuid4()
    first = datetime(2026, 1, 1, tzinfo=UTC)
    later = first + timedelta(days=3)
    db = runtime_of(app).db
    async with db.transaction() as conn:
        created = await repository.upsert(conn, values(model_id, user, first))
        assert created is not None
        assert created.labels == ("person", "car")
        again = await repository.upsert(
            conn, values(model_id, user, later, file_size=99, labels=("cat",))
        )
        assert again is not None
        assert again.created_at == first
        assert again.updated_at == later
        assert (again.file_size, again.labels) == (99, ("cat",))
        hijack = await repository.upsert(conn, values(model_id, intruder, later, name="stolen"))
        assert hijack is None
        assert await repository.get(conn, other, model_id) is None
        mine = await repository.get(conn, owner, model_id)
        assert mine is not None
        assert mine.name == "m"
        assert await repository.soft_delete(conn, owner, model_id, later) is not None
        revived = await repository.upsert(conn, values(model_id, user, later, name="back"))
        assert revived is None  # a deleted model stays deleted
        assert await repository.get(conn, owner, model_id) is None


async def test_list_page_orders_newest_first_with_ties_broken_by_id(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    user = await signup(client)
    owner = uuid.UUID(user.org_id)
    moment = datetime(2026, 5, 1, tzinfo=UTC)
    ids = sorted(uuid.uuid4() for _ in range(3))
    async with runtime_of(app).db.transaction() as conn:
        for model_id in ids:  # the same created_at: the id decides
            await repository.upsert(conn, values(model_id, user, moment))
        await conn.execute(  # NULL labels read as ()
            update(models).where(models.c.org_id == owner).values(labels=None)
        )
        first = await repository.list_page(
            conn, owner, chip=None, source=None, page=PageRequest(limit=2)
        )
        assert [row.id for row in first.items] == [ids[2], ids[1]]
        assert first.items[0].labels == ()
        assert first.next_cursor == encode_cursor(moment, str(ids[1]))
        rest = await repository.list_page(
            conn, owner, chip=None, source=None, page=PageRequest(2, first.next_cursor)
        )
        assert [row.id for row in rest.items] == [ids[0]]
        assert rest.next_cursor is None
