"""Use cases for models. Opens no transaction of its own and never commits.

An upload is two steps with a transaction only around the second: the file is
streamed to object storage first (:func:`receive_file`, no database connection
held, however long it takes), then the record is written (:func:`create_model` or
:func:`replace_file`) in a short unit of work opened by the caller. The caller
deletes the new object if that unit of work fails, and deletes a replaced object
only after it committed (:func:`visiona.models.storage.ObjectStorage.delete_quietly`).
Each change records its audit event in the same unit of work.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.audit import service as audit
from visiona.audit.service import Actor
from visiona.kit.clock import utcnow
from visiona.kit.errors import NotFoundError, StorageUnavailableError, ValidationFailedError
from visiona.kit.jsonlimits import JsonTooDeepError, loads_bounded
from visiona.kit.pagination import Page, PageRequest
from visiona.models import repository
from visiona.models.multipart import StreamingForm
from visiona.models.repository import Model, ModelWrite
from visiona.models.schemas import ModelPatch, ModelSource, UploadFields
from visiona.models.storage import ObjectMissingError, ObjectRange, ObjectStorage, StoredObject

_LOGGER = logging.getLogger(__name__)


def _not_found() -> NotFoundError:
    return NotFoundError("Model not found.")


def _invalid(loc: list[str], message: str, kind: str = "value_error") -> ValidationFailedError:
    return ValidationFailedError([{"loc": loc, "message": message, "type": kind}])


# -- upload ------------------------------------------------------------------------


def upload_fields(form: StreamingForm) -> UploadFields:
    """Validate the text fields of an upload (422 with the failing fields)."""
    raw: dict[str, Any] = {}
    for name, values in form.fields.items():
        if name == "labels":
            raw[name] = _labels(values)
        else:
            raw[name] = values[0] if len(values) == 1 else values
    if "name" not in raw and form.filename:
        raw["name"] = PurePosixPath(form.filename.replace("\\", "/")).stem or form.filename
    try:
        return UploadFields.model_validate(raw)
    except ValidationError as err:
        raise ValidationFailedError(
            [
                {
                    "loc": ["body", *(str(part) for part in error["loc"])],
                    "message": error["msg"],
                    "type": error["type"],
                }
                for error in err.errors()
            ]
        ) from None


def _labels(values: list[str]) -> Any:
    """Labels as repeated fields, or one field holding a JSON list."""
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            return loads_bounded(values[0])
        except JsonTooDeepError:
            raise _invalid(["body", "labels"], "labels is nested too deeply") from None
        except ValueError:
            raise _invalid(["body", "labels"], "labels is not a valid JSON list") from None
    return values


async def receive_file(
    form: StreamingForm,
    storage: ObjectStorage,
    *,
    final_key: Callable[[str], str],
    max_bytes: int,
    check_fields: Callable[[], object] | None = None,
) -> StoredObject:
    """Stream the form's file part to storage; return it once the whole body is read.

    ``check_fields`` runs before the file is stored when the text fields came first
    (so a bad field is refused before any byte is stored) and, in any case, after
    the body was read. A missing or empty file is a 422. On any failure the object
    is deleted again.
    """
    if not await form.until_file():
        raise _invalid(["body", "file"], "Field required", "missing")
    if check_fields is not None and "target_chip" in form.fields:
        check_fields()
    stored = await storage.put_stream(form.file_chunks(), final_key=final_key, max_bytes=max_bytes)
    try:
        await _complete(form, stored, check_fields)
    except BaseException:
        await storage.delete_quietly(stored.key)
        raise
    return stored


async def _complete(
    form: StreamingForm, stored: StoredObject, check_fields: Callable[[], object] | None
) -> None:
    await form.finish()
    if check_fields is not None:
        check_fields()
    if stored.size == 0:
        raise _invalid(["body", "file"], "The file is empty.")


async def create_model(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    owner_id: uuid.UUID,
    model_id: uuid.UUID,
    fields: UploadFields,
    stored: StoredObject,
    actor: Actor | None = None,
) -> Model:
    """Record an uploaded model of ``org_id`` (uploaded by ``owner_id``) whose file is
    already stored."""
    now = utcnow()
    model = await repository.upsert(
        conn,
        ModelWrite(
            id=model_id,
            owner_user_id=owner_id,
            org_id=org_id,
            name=fields.name,
            target_chip=fields.target_chip.value,
            labels=tuple(fields.labels),
            file_size=stored.size,
            sha256=stored.sha256,
            source=ModelSource.UPLOADED,
            storage_key=stored.key,
            created_at=now,
            updated_at=now,
            uploaded_at=now,
        ),
    )
    if model is None:  # a fresh uuid4 cannot collide with a live row of someone else
        raise _not_found()
    await audit.record(
        conn,
        "model.uploaded",
        actor=actor or Actor.user(owner_id),
        org_id=org_id,
        target_id=model.id,
        detail={"name": model.name, "target_chip": model.target_chip, "file_size": stored.size},
    )
    return model


async def require_model(conn: AsyncConnection, org_id: uuid.UUID, model_id: uuid.UUID) -> Model:
    """The organisation's live model, or 404 (also when it is another organisation's)."""
    model = await repository.get(conn, org_id, model_id)
    if model is None:
        raise _not_found()
    return model


@dataclass(frozen=True, slots=True)
class Replaced:
    """A model after its file was replaced, and the key of the object it no longer uses."""

    model: Model
    old_key: str | None


async def replace_file(
    conn: AsyncConnection,
    *,
    org_id: uuid.UUID,
    actor: Actor,
    model_id: uuid.UUID,
    stored: StoredObject,
) -> Replaced:
    """Point the model at a new file (upsert by id: created_at and the id are kept)."""
    current = await repository.get(conn, org_id, model_id, for_update=True)
    if current is None:
        raise _not_found()
    now = utcnow()
    values = ModelWrite(
        id=current.id,
        owner_user_id=current.owner_user_id,
        org_id=current.org_id,
        name=current.name,
        target_chip=current.target_chip,
        labels=current.labels,
        source=current.source,
        faa_object_key=current.faa_object_key,
        file_size=stored.size,
        sha256=stored.sha256,
        storage_key=stored.key,
        created_at=now,  # ignored on conflict: the upsert keeps the original
        updated_at=now,
        uploaded_at=now,
    )
    model = await repository.upsert(conn, values)
    if model is None:
        raise _not_found()
    await audit.record(
        conn,
        "model.file_replaced",
        actor=actor,
        org_id=org_id,
        target_id=model.id,
        detail={"file_size": stored.size},
    )
    old = current.storage_key
    return Replaced(model=model, old_key=old if old != stored.key else None)


# -- read, change, delete ---------------------------------------------------------


async def list_models(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    *,
    chip: str | None,
    source: ModelSource | None,
    page: PageRequest,
) -> Page[Model]:
    """One page of the organisation's models, newest first."""
    return await repository.list_page(conn, org_id, chip=chip, source=source, page=page)


async def update_model(
    conn: AsyncConnection,
    org_id: uuid.UUID,
    model_id: uuid.UUID,
    patch: ModelPatch,
    *,
    actor: Actor,
) -> Model:
    """Rename or relabel the organisation's model; a new name records ``model.renamed``."""
    if patch.name is None and patch.labels is None:
        return await require_model(conn, org_id, model_id)
    before = await require_model(conn, org_id, model_id) if patch.name is not None else None
    now = utcnow()
    model = await repository.update_fields(
        conn, org_id, model_id, name=patch.name, labels=patch.labels, now=now
    )
    if model is None:
        raise _not_found()
    if before is not None and before.name != model.name:
        await audit.record(
            conn,
            "model.renamed",
            actor=actor,
            org_id=org_id,
            target_id=model.id,
            detail={"from": before.name, "to": model.name},
        )
    return model


async def delete_model(
    conn: AsyncConnection, org_id: uuid.UUID, model_id: uuid.UUID, *, actor: Actor
) -> str | None:
    """Soft-delete the organisation's model; return the key of its file (to delete after
    commit)."""
    now = utcnow()
    model = await repository.soft_delete(conn, org_id, model_id, now)
    if model is None:
        raise _not_found()
    await audit.record(
        conn,
        "model.deleted",
        actor=actor,
        org_id=org_id,
        target_id=model.id,
        detail={"name": model.name},
    )
    return model.storage_key


async def open_file(
    storage: ObjectStorage, model: Model, start: int, end: int | None
) -> ObjectRange:
    """Open ``[start, end)`` of the model's file (503 if the object is gone or unreachable)."""
    key = model.storage_key
    if not key:
        raise _not_found()
    with contextlib.suppress(ObjectMissingError):
        return await storage.open(key, start, end)
    _LOGGER.error("model %s: object %s is missing from storage", model.id, key)
    raise StorageUnavailableError("The model file is not available.")
