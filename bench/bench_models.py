"""Model upload and download throughput on the local store, next to a plain file copy.

A `visiona serve` process (SQLite, local object store, both in a temporary
directory) runs on a loopback port; the client is the CLI's own
:class:`visiona.client.http.ApiClient` in this process. One 256 MiB file of random
bytes is copied with :func:`shutil.copyfile` (the reference: what the disk does in
this run), uploaded (streamed multipart → sha256 + object store) and downloaded
(streamed, sha256 checked). Each is run a few times; the median is reported.

Reproduce: ``.venv/bin/python -m bench models`` (or ``make bench``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from visiona.client.http import ApiClient

SIZE = 256 * 1024 * 1024
ROUNDS = 3
MIB = 1024 * 1024


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _server(root: Path) -> Iterator[str]:
    """`visiona serve` on a free loopback port with everything under ``root``."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONA_")}
    env.update(
        VISIONA_DATA_DIR=str(root / "data"),
        VISIONA_MODEL_MAX_BYTES=str(SIZE + MIB),
        VISIONA_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from visiona.cli import main; main()",
            "serve",
            "--port",
            str(port),
        ],
        cwd=root,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError("visiona serve exited early")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("visiona serve did not start within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _rate(seconds: float) -> float:
    return SIZE / MIB / seconds


def main() -> None:
    """Run the scenario and print MiB/s for copy, upload and download."""
    with tempfile.TemporaryDirectory(prefix="visiona-bench-models-") as tmp:
        root = Path(tmp)
        source = root / "model.nef"
        with source.open("wb") as out:
            for _ in range(SIZE // (16 * MIB)):
                out.write(os.urandom(16 * MIB))
        with _server(root) as url:
            email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
            password = uuid.uuid4().hex  # a throwaway account on a throwaway server
            created = httpx.post(
                f"{url}/api/v1/auth/register",
                json={"email": email, "password": password, "name": "bench"},
            )
            created.raise_for_status()
            with ApiClient(url) as anonymous:
                token = anonymous.login(email, password)
            copies: list[float] = []
            uploads: list[float] = []
            downloads: list[float] = []
            with ApiClient(url, token, timeout=120) as api:
                for round_ in range(ROUNDS):
                    copy = root / f"copy-{round_}.nef"
                    copies.append(_timed(functools.partial(shutil.copyfile, source, copy)))
                    copy.unlink()
                    started = time.perf_counter()
                    model = api.upload_model(source, chip="kl520", name="bench", labels=[])
                    uploads.append(time.perf_counter() - started)
                    model_id = str(model["id"])
                    dest = root / f"download-{round_}.nef"
                    downloads.append(_timed(functools.partial(api.download_model, model_id, dest)))
                    dest.unlink()
                    api.call("DELETE", f"/models/{model_id}")
    copy_rate = _rate(statistics.median(copies))
    up_rate = _rate(statistics.median(uploads))
    down_rate = _rate(statistics.median(downloads))
    print(f"model size: {SIZE // MIB} MiB, {ROUNDS} rounds, median figures, loopback, local store")
    print(f"  plain file copy (shutil.copyfile): {copy_rate:8.1f} MiB/s   (reference)")
    print(
        f"  upload   (multipart → sha256 → store): {up_rate:8.1f} MiB/s   "
        f"{up_rate / copy_rate:.2f}x the copy"
    )
    print(
        f"  download (stream → sha256 check):      {down_rate:8.1f} MiB/s   "
        f"{down_rate / copy_rate:.2f}x the copy"
    )
    print("  reproduce: .venv/bin/python -m bench models")
