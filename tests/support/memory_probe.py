"""Upload and download one model of N MiB in process, then print the peak RSS in KiB.

Run as ``python -m tests.support.memory_probe SIZE_MIB DATA_DIR`` by the streaming
test: a fresh process per size, so the high-water mark belongs to that size alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import resource
import sys
from pathlib import Path

import httpx

from testkit.live import serve_in_thread
from tests.support.api import signup
from tests.support.models import CONTENT_TYPE, nef, streamed_body
from visiona.app import create_app
from visiona.kit import migrate
from visiona.kit.settings import Settings

CHUNK = 64 * 1024


async def probe(size: int, data_dir: Path) -> None:
    """Upload ``size`` bytes, download them again, check the sha256 both ways."""
    url = f"sqlite+aiosqlite:///{data_dir / 'visiona.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    settings = Settings(
        _env_file=None,
        database_url=url,
        data_dir=data_dir,
        model_max_bytes=size,
        log_level="WARNING",
    )
    # A real server on loopback: httpx's in-process transport buffers whole responses.
    with serve_in_thread(create_app(settings)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            user = await signup(client)
            created = await client.post(
                "/api/v1/models",
                headers={**user.headers, "Content-Type": CONTENT_TYPE},
                content=streamed_body({"target_chip": "kl520"}, size, CHUNK),
            )
            assert created.status_code == 201, created.text
            model = created.json()
            digest = hashlib.sha256()
            async with client.stream(
                "GET", f"/api/v1/models/{model['id']}/file", headers=user.headers
            ) as response:
                async for chunk in response.aiter_raw():
                    digest.update(chunk)
    expected = hashlib.sha256()
    block = nef(CHUNK)
    for _ in range(size // CHUNK):
        expected.update(block)
    assert model["sha256"] == digest.hexdigest() == expected.hexdigest()


def main() -> None:
    """Entry point: ``SIZE_MIB DATA_DIR``."""
    size = int(sys.argv[1]) * 1024 * 1024
    asyncio.run(probe(size, Path(sys.argv[2])))
    sys.stdout.write(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\n")


if __name__ == "__main__":
    main()
