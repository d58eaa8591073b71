"""HTTP routes for models (HTTP in/out only).

Uploads (``POST /models``, ``PUT /models/{id}/file``) read the request body
themselves as a stream (:mod:`visiona.models.multipart`) and open their unit of
work only after the file is stored, so no database connection is held while bytes
arrive. The other routes use the per-request unit of work (:data:`Conn`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from visiona.auth.dependencies import CurrentPrincipal, ModelDownloader, ModelWriter, Principal
from visiona.kit.database import Database
from visiona.kit.deps import Conn, DatabaseDep, SettingsDep
from visiona.kit.errors import (
    BadRequestError,
    CsrfError,
    NotFoundError,
    PayloadTooLargeError,
    StorageUnavailableError,
    UnauthorizedError,
    ValidationFailedError,
)
from visiona.kit.http import error_responses
from visiona.kit.pagination import PageParams
from visiona.models import service
from visiona.models.chips import TargetChip
from visiona.models.dependencies import StorageDep
from visiona.models.multipart import InvalidMultipartError, StreamingForm
from visiona.models.repository import Model
from visiona.models.schemas import (
    ModelOut,
    ModelPage,
    ModelPatch,
    ModelSource,
    UploadFields,
)
from visiona.models.storage import ObjectStorage, StoredObject, model_key

router = APIRouter(prefix="/models", tags=["models"])
T = TypeVar("T")

# Room for the text fields and multipart framing on top of the file itself.
_FORM_OVERHEAD = 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "target_chip"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {
                            "type": "string",
                            "description": "Defaults to the file name without extension.",
                        },
                        "target_chip": {"type": "string", "enum": [c.value for c in TargetChip]},
                        "labels": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Repeated fields, or one field holding a JSON list.",
                        },
                    },
                }
            }
        },
    }
}
_REPLACE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def _form(request: Request, max_bytes: int) -> StreamingForm:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + _FORM_OVERHEAD:
        raise PayloadTooLargeError(f"The file is larger than the limit of {max_bytes} bytes.")
    return StreamingForm(request.headers.get("content-type"), _body(request))


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise BadRequestError("The client went away during the upload.") from None


async def _record_or_discard(
    storage: ObjectStorage, stored: StoredObject, coro: Awaitable[T], *, keep: str | None = None
) -> T:
    """Await ``coro`` (a unit of work using ``stored``); delete the object if it fails.

    ``keep`` is a key still in use by the committed state (a re-upload of the same
    bytes lands on the same key): it is never deleted.
    """
    try:
        return await coro
    except BaseException:
        if stored.key != keep:
            await storage.delete_quietly(stored.key)
        raise


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    summary="Upload a model",
    openapi_extra=_UPLOAD_BODY,
    responses=error_responses(
        InvalidMultipartError,
        UnauthorizedError,
        CsrfError,
        PayloadTooLargeError,
        ValidationFailedError,
        StorageUnavailableError,
    ),
)
async def upload_model(
    request: Request,
    principal: ModelWriter,
    db: DatabaseDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> ModelOut:
    """Upload a `.nef` file as multipart/form-data (`file`, `target_chip`, `name`?, `labels`?).

    The file is streamed to object storage while its size and sha256 are computed;
    over `VISIONA_MODEL_MAX_BYTES` → 413 and nothing is kept.
    """
    limit = settings.model_max_bytes
    form = _form(request, limit)
    owner, model_id = principal.user_id, uuid.uuid4()
    stored = await service.receive_file(
        form,
        storage,
        final_key=lambda sha256: model_key(owner, model_id, sha256),
        max_bytes=limit,
        check_fields=lambda: service.upload_fields(form),
    )
    fields: UploadFields = service.upload_fields(form)
    model = await _record_or_discard(
        storage, stored, _create(db, principal, model_id, fields, stored)
    )
    return ModelOut.model_validate(model)


async def _create(
    db: Database,
    principal: Principal,
    model_id: uuid.UUID,
    fields: UploadFields,
    stored: StoredObject,
) -> Model:
    # unit of work: streaming upload: the record is written once the bytes are stored
    async with db.transaction() as conn:
        return await service.create_model(
            conn,
            org_id=principal.org_id,
            owner_id=principal.user_id,
            model_id=model_id,
            fields=fields,
            stored=stored,
            actor=principal.audit_actor,
        )


@router.get(
    "",
    response_model=ModelPage,
    summary="List your models",
    responses=error_responses(UnauthorizedError, ValidationFailedError),
)
async def list_models(
    *,
    principal: CurrentPrincipal,
    conn: Conn,
    page: PageParams,
    chip: Annotated[TargetChip | None, Query(description="Only this target chip.")] = None,
    source: Annotated[ModelSource | None, Query(description="Only this source.")] = None,
) -> ModelPage:
    """The caller's live models, newest first, one page at a time."""
    found = await service.list_models(
        conn,
        principal.org_id,
        chip=chip.value if chip else None,
        source=source,
        page=page,
    )
    return ModelPage(
        items=[ModelOut.model_validate(r) for r in found.items], next_cursor=found.next_cursor
    )


@router.get(
    "/{model_id}",
    response_model=ModelOut,
    summary="One model",
    responses=error_responses(UnauthorizedError, NotFoundError),
)
async def get_model(model_id: uuid.UUID, principal: CurrentPrincipal, conn: Conn) -> ModelOut:
    """The caller's model (404 when it is missing, deleted or someone else's)."""
    return ModelOut.model_validate(await service.require_model(conn, principal.org_id, model_id))


@router.patch(
    "/{model_id}",
    response_model=ModelOut,
    summary="Rename or relabel a model",
    responses=error_responses(UnauthorizedError, CsrfError, NotFoundError),
)
async def patch_model(
    model_id: uuid.UUID, body: ModelPatch, principal: ModelWriter, conn: Conn
) -> ModelOut:
    """Change `name` and/or `labels`; omitted fields stay as they are."""
    model = await service.update_model(
        conn, principal.org_id, model_id, body, actor=principal.audit_actor
    )
    return ModelOut.model_validate(model)


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a model",
    responses=error_responses(UnauthorizedError, CsrfError, NotFoundError),
)
async def delete_model(
    model_id: uuid.UUID, principal: ModelWriter, db: DatabaseDep, storage: StorageDep
) -> Response:
    """Soft-delete the model (404 afterwards); its file is deleted once that is committed."""
    # unit of work: its own, so the file is deleted only after the commit
    async with db.transaction() as conn:
        key = await service.delete_model(
            conn, principal.org_id, model_id, actor=principal.audit_actor
        )
    if key:
        await storage.delete_quietly(key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/{model_id}/file",
    response_model=ModelOut,
    summary="Replace a model's file",
    openapi_extra=_REPLACE_BODY,
    responses=error_responses(
        InvalidMultipartError,
        UnauthorizedError,
        CsrfError,
        NotFoundError,
        PayloadTooLargeError,
        ValidationFailedError,
        StorageUnavailableError,
    ),
)
async def replace_file(
    model_id: uuid.UUID,
    request: Request,
    principal: ModelWriter,
    *,
    db: DatabaseDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> ModelOut:
    """Upload a new file for the model: same id and `created_at`, new size and sha256.

    The old file is deleted after the change is committed.
    """
    owner = principal.user_id
    # unit of work: streaming upload: a short check before any byte, the record after
    async with db.transaction() as conn:  # 404 before any byte is stored
        current = await service.require_model(conn, principal.org_id, model_id)
    limit = settings.model_max_bytes
    stored = await service.receive_file(
        _form(request, limit),
        storage,
        final_key=lambda sha256: model_key(owner, model_id, sha256),
        max_bytes=limit,
    )
    replaced = await _record_or_discard(
        storage, stored, _replace(db, principal, model_id, stored), keep=current.storage_key
    )
    if replaced.old_key:
        await storage.delete_quietly(replaced.old_key)
    return ModelOut.model_validate(replaced.model)


async def _replace(
    db: Database, principal: Principal, model_id: uuid.UUID, stored: StoredObject
) -> service.Replaced:
    # unit of work: streaming upload: the record is written once the bytes are stored
    async with db.transaction() as conn:
        return await service.replace_file(
            conn,
            org_id=principal.org_id,
            actor=principal.audit_actor,
            model_id=model_id,
            stored=stored,
        )


@router.get(
    "/{model_id}/file",
    summary="Download a model's file",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The whole file."},
        206: {"content": {"application/octet-stream": {}}, "description": "One byte range."},
        304: {"description": "`If-None-Match` matches the ETag."},
        416: {"description": "The range is outside the file."},
        **error_responses(UnauthorizedError, NotFoundError, StorageUnavailableError),
    },
)
async def download_file(
    model_id: uuid.UUID,
    request: Request,
    principal: ModelDownloader,
    conn: Conn,
    storage: StorageDep,
) -> Response:
    """Stream the file with `Content-Length`, an `ETag` (its sha256) and `Accept-Ranges`.

    A single `Range: bytes=a-b` (or `a-`, `-n`) gets 206 with `Content-Range`, so an
    interrupted download can resume (`If-Range` with the ETag is honoured).
    """
    model = await service.require_model(conn, principal.org_id, model_id)
    size = model.file_size
    etag = f'"{model.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, no-cache"}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted is not None and if_range is not None and if_range.strip() != etag:
        wanted = None  # the client's partial copy is of another version: send it whole
    span = _parse_range(wanted, size) if wanted else None
    if span == "unsatisfiable":
        return Response(
            status_code=status.HTTP_416_RANGE_NOT_SATISFIABLE,
            headers={**headers, "Content-Range": f"bytes */{size}"},
        )
    start, end = span if isinstance(span, tuple) else (0, None)
    opened = await service.open_file(storage, model, start, end)
    headers["Content-Length"] = str(opened.end - opened.start)
    headers["Content-Disposition"] = attachment_disposition(model.name)
    code = status.HTTP_200_OK
    if isinstance(span, tuple):
        code = status.HTTP_206_PARTIAL_CONTENT
        headers["Content-Range"] = f"bytes {opened.start}-{opened.end - 1}/{opened.size}"
    return StreamingResponse(
        opened.chunks, status_code=code, headers=headers, media_type="application/octet-stream"
    )


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    return header.strip() == "*" or etag in {part.strip() for part in header.split(",")}


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:  # noqa: PLR0911 - a flat case table from RFC 9110 §14.1
    """One byte range as ``(start, end_exclusive)``; None = ignore (serve the whole file).

    Several ranges, or a header this parser does not know, are ignored (RFC 9110
    allows it); a range that starts past the end is ``"unsatisfiable"``.
    """
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        count = int(last)
        if count == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - count), size
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = size if not last else min(int(last) + 1, size)
    if end <= start:
        return None  # last < first: syntactically invalid, ignored
    return start, end


def attachment_disposition(name: str) -> str:
    """The ``Content-Disposition`` of a download of the model ``name`` (``….nef``; the
    console's download uses it too)."""
    filename = name if name.lower().endswith(".nef") else f"{name}.nef"
    ascii_name = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
