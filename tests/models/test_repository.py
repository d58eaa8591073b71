"""The models repository on SQLite and PostgreSQL (schema built by the migrations)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI

from tests.support.api import signup
from tests.support.models import runtime_of
from visiona.kit.pagination import PageRequest, encode_cursor
from visiona.models import repository


def values(
    model_id: uuid.UUID, owner: uuid.UUID, moment: datetime, **extra: object
) -> dict[str, object]:
    """A full row of the models table."""
    row: dict[str, object] = {
        "id": model_id,
        "owner_user_id": owner,
        "name": "m",
        "target_chip": "kl520",
        "labels": ["person", "car"],
        "file_size": 10,
        "sha256": "0" * 64,
        "source": "builtin",
        "storage_key": f"models/{owner}/{model_id}/{'0' * 64}.nef",
        "created_at": moment,
        "updated_at": moment,
        "uploaded_at": moment,
    }
    row.update(extra)
    return row


async def test_upsert_keeps_created_at_and_never_touches_another_owner(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = uuid.UUID((await signup(client)).id)
    other = uuid.UUID((await signup(client)).id)
    model_id = uuid.uuid4()
    first = datetime(2026, 1, 1, tzinfo=UTC)
    later = first + timedelta(days=3)
    db = runtime_of(app).db
    async with db.transaction() as conn:
        created = await repository.upsert(conn, values(model_id, owner, first))
        assert created is not None
        assert created["labels"] == ["person", "car"]
        again = await repository.upsert(
            conn, values(model_id, owner, later, file_size=99, labels=["cat"])
        )
        assert again is not None
        assert again["created_at"] == first
        assert again["updated_at"] == later
        assert (again["file_size"], again["labels"]) == (99, ["cat"])
        hijack = await repository.upsert(conn, values(model_id, other, later, name="stolen"))
        assert hijack is None
        assert await repository.get(conn, other, model_id) is None
        mine = await repository.get(conn, owner, model_id)
        assert mine is not None
        assert mine["name"] == "m"
        assert await repository.soft_delete(conn, owner, model_id, later) is not None
        revived = await repository.upsert(conn, values(model_id, owner, later, name="back"))
        assert revived is None  # a deleted model stays deleted
        assert await repository.get(conn, owner, model_id) is None


async def test_list_page_orders_newest_first_with_ties_broken_by_id(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = uuid.UUID((await signup(client)).id)
    moment = datetime(2026, 5, 1, tzinfo=UTC)
    ids = sorted(uuid.uuid4() for _ in range(3))
    async with runtime_of(app).db.transaction() as conn:
        for model_id in ids:  # the same created_at: the id decides
            await repository.upsert(conn, values(model_id, owner, moment, labels=None))
        first = await repository.list_page(
            conn, owner, chip=None, source=None, page=PageRequest(limit=2)
        )
        assert [row["id"] for row in first.items] == [ids[2], ids[1]]
        assert first.items[0]["labels"] == []
        assert first.next_cursor == encode_cursor(moment, str(ids[1]))
        rest = await repository.list_page(
            conn, owner, chip=None, source=None, page=PageRequest(2, first.next_cursor)
        )
        assert [row["id"] for row in rest.items] == [ids[0]]
        assert rest.next_cursor is None
