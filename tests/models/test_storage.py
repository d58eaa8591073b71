"""The object-storage interface on its own: obstore's in-memory store and the local directory."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import obstore
import pytest
from obstore.store import MemoryStore

from tests.support.models import nef
from visiona.kit.errors import PayloadTooLargeError
from visiona.kit.settings import Settings
from visiona.models.storage import (
    ObjectMissingError,
    ObjectStorage,
    StorageConfigError,
    model_key,
)


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    """``data`` in pieces of ``size`` bytes."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def all_keys(store: MemoryStore) -> list[str]:
    """Every key in ``store``."""
    listed = await obstore.list(store).collect_async()
    return sorted(str(meta["path"]) for meta in listed)


async def test_put_stream_counts_hashes_and_lands_on_the_final_key() -> None:
    store = MemoryStore()
    storage = ObjectStorage(store, "memory")
    data = nef(3 * 1024 * 1024 + 7)
    stored = await storage.put_stream(
        chunks_of(data, 65536), final_key=lambda sha: f"models/x/{sha}.nef", max_bytes=len(data)
    )
    sha = hashlib.sha256(data).hexdigest()
    assert (stored.key, stored.size, stored.sha256) == (f"models/x/{sha}.nef", len(data), sha)
    assert await all_keys(store) == [stored.key]
    assert await storage.exists(stored.key)

    opened = await storage.open(stored.key, 10, 20)
    assert (opened.start, opened.end, opened.size) == (10, 20, len(data))
    assert b"".join([chunk async for chunk in opened.chunks]) == data[10:20]
    tail = await storage.open(stored.key, len(data) - 5)
    assert b"".join([chunk async for chunk in tail.chunks]) == data[-5:]
    whole = await storage.open(stored.key)
    assert b"".join([chunk async for chunk in whole.chunks]) == data

    await storage.delete(stored.key)
    await storage.delete(stored.key)  # already gone: not an error
    assert not await storage.exists(stored.key)
    with pytest.raises(ObjectMissingError):
        await storage.open(stored.key)


async def test_over_the_limit_or_a_failing_source_leaves_nothing() -> None:
    store = MemoryStore()
    storage = ObjectStorage(store, "memory")
    with pytest.raises(PayloadTooLargeError):
        await storage.put_stream(chunks_of(nef(5000)), final_key=str, max_bytes=4999)

    async def broken() -> AsyncIterator[bytes]:
        yield b"some bytes"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await storage.put_stream(broken(), final_key=str, max_bytes=100)
    assert await all_keys(store) == []


async def test_the_default_store_is_a_directory_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)
    storage = ObjectStorage.from_settings(settings)
    assert storage.target == f"local:{tmp_path}/objects"
    stored = await storage.put_stream(
        chunks_of(b"abc"), final_key=lambda sha: f"k/{sha}", max_bytes=10
    )
    assert (tmp_path / "objects" / stored.key).read_bytes() == b"abc"


def test_keys_are_built_by_the_server() -> None:
    import uuid  # noqa: PLC0415 - only this test needs it

    owner, model = uuid.uuid4(), uuid.uuid4()
    assert model_key(owner, model, "ab" * 32) == f"models/{owner}/{model}/{'ab' * 32}.nef"


def test_memory_url_and_options_from_settings() -> None:
    settings = Settings(_env_file=None, storage_url="memory://")
    assert ObjectStorage.from_settings(settings).target == "memory://"


def test_bad_options_fail_with_a_line_that_leaks_no_secret() -> None:
    settings = Settings(
        _env_file=None,
        storage_url="s3://user:hunter2@bucket/prefix",
        storage_options={"not_an_option": "hunter2-secret"},
    )
    with pytest.raises(StorageConfigError) as caught:
        ObjectStorage.from_settings(settings)
    assert "hunter2" not in str(caught.value)
    assert "s3://bucket/prefix" in str(caught.value)
    assert "hunter2" not in repr(settings)
    assert settings.storage_target == "s3://bucket/prefix"


def test_serve_refuses_bad_storage_options_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415 - only this test needs it

    from visiona.cli import app  # noqa: PLC0415 - only this test needs it

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISIONA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VISIONA_STORAGE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("VISIONA_STORAGE_OPTIONS", '{"no_such_option": "s3cr3t"}')
    result = CliRunner().invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: storage s3://bucket/prefix: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "s3cr3t" not in result.output
