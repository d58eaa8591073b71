"""Object storage for model files: one small interface over obstore.

The default is a local directory (``DATA_DIR/objects``, :class:`obstore.store.LocalStore`);
``VISIONA_STORAGE_URL`` selects any store obstore understands (``s3://``, ``gs://``,
``az://``, ``memory://``, ``file://``) with ``VISIONA_STORAGE_OPTIONS``.

Three operations matter: :meth:`ObjectStorage.put_stream` (write a stream while
counting and hashing it, under a size limit), :meth:`ObjectStorage.open` (a byte
range as a stream, with the object's size) and :meth:`ObjectStorage.delete`.
Keys are always built by the server (:func:`model_key`, :func:`upload_key`).

A stream is written under a temporary key ``uploads/<uuid>.part`` and renamed to its
final key once its sha256 is known, because the final key contains the sha256: no
reader can ever see a half-written object at a model key. A failed or too-large
upload is aborted by obstore (the local store removes its staging file, S3 aborts
the multipart upload) and the temporary key is deleted as well.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore import exceptions as obs_exc
from obstore.store import LocalStore, from_url

from visiona.kit.errors import PayloadTooLargeError, StorageUnavailableError

if TYPE_CHECKING:
    from obstore import GetOptions
    from obstore.store import ObjectStore

    from visiona.kit.settings import Settings

_LOGGER = logging.getLogger(__name__)

# Bytes handed to obstore at a time (bigger chunks cross the Python/Rust boundary less).
_COALESCE = 1024 * 1024
# Multipart parts (S3 accepts 5 MiB and up): at most _PART_SIZE * _PART_CONCURRENCY
# bytes of one upload are in memory at once. 8 MiB parts write to the local store
# about 2.5x faster than 5 MiB ones here (bench/bench_models.py).
_PART_SIZE = 8 * 1024 * 1024
_PART_CONCURRENCY = 2
_READ_CHUNK = 256 * 1024
_LOCAL_READ_CHUNK = 1024 * 1024
_DURATION_KEYS = frozenset({"retry_timeout", "init_backoff", "max_backoff"})
_MISSING = (FileNotFoundError, obs_exc.NotFoundError)
_FAILED = (obs_exc.BaseError, OSError)


class ObjectMissingError(Exception):
    """The key has no object (a record points at a file that is gone)."""


class StorageConfigError(ValueError):
    """``VISIONA_STORAGE_URL`` or ``VISIONA_STORAGE_OPTIONS`` cannot build a store."""


@dataclass(frozen=True)
class StoredObject:
    """An object written by :meth:`ObjectStorage.put_stream`."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectRange:
    """An open byte range ``[start, end)`` of an object of ``size`` bytes."""

    chunks: AsyncIterator[bytes]
    start: int
    end: int
    size: int


def model_key(owner_id: uuid.UUID, model_id: uuid.UUID, sha256: str) -> str:
    """The key of a model file: ``models/<owner>/<model id>/<sha256>.nef``."""
    return f"models/{owner_id}/{model_id}/{sha256}.nef"


def upload_key() -> str:
    """A fresh temporary key for an upload in progress."""
    return f"uploads/{uuid.uuid4()}.part"


class ObjectStorage:
    """The few object-store operations the models feature needs."""

    def __init__(self, store: ObjectStore, target: str) -> None:
        """Wrap ``store``; ``target`` names it in logs without secrets."""
        self._store = store
        self.target = target
        self._local = isinstance(store, LocalStore)

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStorage:
        """Build the store ``settings`` describe (a local directory when no URL is set)."""
        if not settings.storage_url:
            root = Path(settings.data_dir) / "objects"
            root.mkdir(parents=True, exist_ok=True)
            return cls(LocalStore(root.resolve()), settings.storage_target)
        options = _with_durations(settings.storage_options)
        try:
            store = from_url(settings.storage_url, **options)
        except (KeyboardInterrupt, SystemExit):
            raise
        # obstore reports a bad option as a Rust panic (a BaseException); neither its
        # text (which may echo an option value) nor its type is worth keeping.
        except BaseException as err:  # noqa: BLE001 - see above
            raise StorageConfigError(
                f"storage {settings.storage_target}: the URL or VISIONA_STORAGE_OPTIONS "
                f"are not valid for obstore ({type(err).__name__})"
            ) from None
        return cls(store, settings.storage_target)

    async def put_stream(
        self,
        chunks: AsyncIterable[bytes],
        *,
        final_key: Callable[[str], str],
        max_bytes: int,
    ) -> StoredObject:
        """Write ``chunks`` and return its key, size and sha256.

        The stream goes to a temporary key while it is counted and hashed, then is
        renamed to ``final_key(sha256)``. Over ``max_bytes`` → :class:`PayloadTooLargeError`
        and nothing stays behind. An error raised by ``chunks`` itself propagates as is.
        """
        temp = upload_key()
        digest = hashlib.sha256()
        size = 0
        source_error: BaseException | None = None

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size, source_error
            buffer = bytearray()
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    _check_limit(size, max_bytes)
                    digest.update(chunk)
                    buffer += chunk
                    if len(buffer) >= _COALESCE:
                        yield bytes(buffer)
                        buffer.clear()
            except GeneratorExit:  # obstore gave up on the stream: not the source's fault
                raise
            except BaseException as err:
                source_error = err
                raise
            if buffer:
                yield bytes(buffer)

        try:
            await obstore.put_async(
                self._store,
                temp,
                counted(),
                chunk_size=_PART_SIZE,
                max_concurrency=_PART_CONCURRENCY,
            )
        except BaseException as err:
            await self._discard(temp)
            if source_error is not None:
                raise source_error from None
            if isinstance(err, _FAILED):
                raise self._unavailable("put", err) from err
            raise  # cancellation or a bug: not the store's fault
        sha256 = digest.hexdigest()
        key = final_key(sha256)
        try:
            await obstore.rename_async(self._store, temp, key)
        except BaseException as err:
            await self._discard(temp)
            if isinstance(err, _FAILED):
                raise self._unavailable("rename", err) from err
            raise
        return StoredObject(key=key, size=size, sha256=sha256)

    async def open(self, key: str, start: int = 0, end: int | None = None) -> ObjectRange:
        """Open bytes ``[start, end)`` of ``key`` (to its end when ``end`` is None)."""
        if self._local:
            return await self._open_by_ranges(key, start, end)
        options: GetOptions = {}
        if start or end is not None:
            options["range"] = (start, end) if end is not None else {"offset": start}
        try:
            result = await obstore.get_async(self._store, key, options=options)
        except _MISSING as err:
            raise ObjectMissingError(key) from err
        except _FAILED as err:
            raise self._unavailable("get", err) from err
        first, stop = result.range
        size = int(result.meta["size"])
        return ObjectRange(
            chunks=self._stream(result.stream(min_chunk_size=_READ_CHUNK), key),
            start=first,
            end=stop,
            size=size,
        )

    async def _open_by_ranges(self, key: str, start: int, end: int | None) -> ObjectRange:
        """The local store's streaming get is slow (~200 MB/s here); range reads are not."""
        try:
            meta = await obstore.head_async(self._store, key)
        except _MISSING as err:
            raise ObjectMissingError(key) from err
        except _FAILED as err:
            raise self._unavailable("head", err) from err
        size = int(meta["size"])
        stop = size if end is None else min(end, size)
        return ObjectRange(chunks=self._ranges(key, start, stop), start=start, end=stop, size=size)

    async def _ranges(self, key: str, start: int, stop: int) -> AsyncIterator[bytes]:
        offset = start
        while offset < stop:
            length = min(_LOCAL_READ_CHUNK, stop - offset)
            try:
                chunk = await obstore.get_range_async(self._store, key, start=offset, length=length)
            except _FAILED as err:  # gone or failing mid-way: the body ends short
                _LOGGER.warning(
                    "reading %s from %s failed: %s", key, self.target, type(err).__name__
                )
                raise
            offset += len(chunk)
            yield bytes(chunk)

    async def _stream(self, stream: AsyncIterator[Any], key: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk if isinstance(chunk, bytes) else bytes(chunk)
        except _FAILED as err:
            # Headers are gone already: the client sees a short body and can resume.
            _LOGGER.warning("reading %s from %s failed: %s", key, self.target, type(err).__name__)
            raise

    async def delete(self, key: str) -> None:
        """Delete ``key``; a key that does not exist is not an error."""
        try:
            await obstore.delete_async(self._store, key)
        except _MISSING:
            return
        except _FAILED as err:
            raise self._unavailable("delete", err) from err

    async def delete_quietly(self, key: str) -> None:
        """Delete ``key``, logging (not raising) a failure: for clean-ups after the fact."""
        try:
            await self.delete(key)
        except StorageUnavailableError:
            _LOGGER.warning("object %s left in %s: delete failed", key, self.target)

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object."""
        try:
            await obstore.head_async(self._store, key)
        except _MISSING:
            return False
        except _FAILED as err:
            raise self._unavailable("head", err) from err
        return True

    async def ping(self) -> None:
        """Reach the store (a HEAD of a key that need not exist); raise if unreachable."""
        await self.exists("healthz")

    async def _discard(self, key: str) -> None:
        try:
            await obstore.delete_async(self._store, key)
        except _MISSING:
            return
        except _FAILED as err:
            _LOGGER.warning(
                "temporary object %s left in %s: %s", key, self.target, type(err).__name__
            )

    def _unavailable(self, operation: str, err: BaseException) -> StorageUnavailableError:
        # The driver's text can carry endpoints and request details: log its type only.
        _LOGGER.warning("storage %s: %s failed: %s", self.target, operation, type(err).__name__)
        return StorageUnavailableError()


def _check_limit(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise PayloadTooLargeError(f"The file is larger than the limit of {max_bytes} bytes.")


def _with_durations(options: dict[str, Any]) -> dict[str, Any]:
    """Options from JSON, with retry durations given in seconds turned into timedeltas."""

    def convert(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: convert(v, k) for k, v in value.items()}
        if key in _DURATION_KEYS and isinstance(value, int | float):
            return timedelta(seconds=value)
        return value

    converted: dict[str, Any] = convert(options)
    return converted
