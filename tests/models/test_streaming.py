"""Uploads and downloads stream: the server's memory does not grow with the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SMALL_MIB = 8
LARGE_MIB = 64


def peak_rss_kib(size_mib: int, data_dir: Path) -> int:
    """Peak RSS of a fresh process that uploads and downloads ``size_mib`` MiB."""
    data_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.memory_probe", str(size_mib), str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.strip().splitlines()[-1])


def test_memory_stays_flat_whatever_the_size(tmp_path: Path) -> None:
    small = peak_rss_kib(SMALL_MIB, tmp_path / "small")
    large = peak_rss_kib(LARGE_MIB, tmp_path / "large")
    grown_mib = (large - small) / 1024
    # A buffered upload or download would grow by the 56 MiB difference at least;
    # streaming keeps a few MiB of parts and chunks in flight whatever the size.
    assert grown_mib < 32, f"peak RSS grew by {grown_mib:.1f} MiB for +{LARGE_MIB - SMALL_MIB} MiB"
