"""The one fast JSON encoder (orjson) writes what pydantic writes, for the types we answer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from visiona.kit.jsonout import JSONOut, dumps


class _Answer(BaseModel):
    at: datetime
    whole: datetime
    tiny: datetime
    id: uuid.UUID
    text: str
    number: float
    items: list[int] | None


class _PgUuid(uuid.UUID):
    """Like asyncpg's own UUID: a subclass, which orjson does not encode by itself."""


def test_values_encode_like_pydantic() -> None:
    answer = _Answer(
        at=datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC),
        whole=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        tiny=datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=UTC),
        id=uuid.uuid4(),
        text='ä\u2028 "x" </script> \x01',
        number=1.0,
        items=None,
    )
    assert dumps(dict(answer)) == answer.model_dump_json().encode()


def test_a_uuid_subclass_is_its_text() -> None:
    value = _PgUuid(int=7)
    assert dumps({"id": value}) == b'{"id":"00000000-0000-0000-0000-000000000007"}'


def test_a_pydantic_model_inside_is_dumped_by_pydantic() -> None:
    inner = _Answer(
        at=datetime(2026, 1, 2, tzinfo=UTC),
        whole=datetime(2026, 1, 2, tzinfo=UTC),
        tiny=datetime(2026, 1, 2, tzinfo=UTC),
        id=uuid.UUID(int=1),
        text="t",
        number=2.5,
        items=[1],
    )
    assert dumps({"inner": inner}) == b'{"inner":' + inner.model_dump_json().encode() + b"}"


def test_anything_else_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        dumps({"x": object()})


def test_the_response_is_json_with_its_status() -> None:
    response = JSONOut({"status": "ok"}, status_code=503)
    assert response.body == b'{"status":"ok"}'
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
