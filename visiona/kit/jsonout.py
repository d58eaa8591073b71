"""JSON out through one fast encoder: orjson, with pydantic's output byte for byte.

The hot routes (``GET /devices/{id}``, the device list, ``/healthz``, the tunnel's
refusals) answer with a :class:`JSONOut` of plain values built from the repository's
records, instead of FastAPI validating the returned model against ``response_model``
again and rendering it with :func:`json.dumps`. The route keeps ``response_model`` for
its OpenAPI document. orjson, not msgspec (both fast C encoders): it encodes the
records' frozen dataclasses, :class:`uuid.UUID` and :class:`datetime.datetime` without
declaring a schema type per answer, and its ``OPT_UTC_Z`` renders a UTC datetime the
way pydantic does (``2026-01-02T03:04:05.678900Z``; no fraction when the microseconds
are 0), so bodies stay byte-compatible with the routes' pydantic answers: compact, UTF-8
(not ``\\u`` escapes), keys in insertion order. A :class:`uuid.UUID` subclass (asyncpg's
own) is written as its text, a pydantic model met inside is dumped by pydantic
(``mode="json"``).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response

_OPTIONS = orjson.OPT_UTC_Z


def _default(value: Any) -> Any:
    # orjson encodes uuid.UUID itself, not subclasses: asyncpg returns its own pgproto UUID
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(content: Any) -> bytes:
    """``content`` as compact UTF-8 JSON (datetimes, UUIDs, dataclasses included)."""
    return orjson.dumps(content, default=_default, option=_OPTIONS)


class JSONOut(Response):
    """A JSON response rendered by :func:`dumps`."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """The body: ``content`` through :func:`dumps`."""
        return dumps(content)
