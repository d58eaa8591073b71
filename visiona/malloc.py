"""Process-wide glibc malloc tuning for the byte-moving processes (server and agent).

glibc mmaps every allocation of 128 KiB and more and unmaps it on free: a relay
that handles 256 KiB-1 MiB messages then pays page faults on every one (measured
2-4x the CPU per GiB, see PERF-NOTES). Raising ``M_MMAP_THRESHOLD`` and
``M_TRIM_THRESHOLD`` keeps such buffers in the heap. Standalone: both ``visiona
serve`` and ``visiona agent`` call it at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

_LOGGER = logging.getLogger(__name__)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MIB = 1024 * 1024


def tune_malloc(mmap_threshold: int = 8 * MIB, trim_threshold: int = 64 * MIB) -> bool:
    """Apply the thresholds with ``mallopt``; False where it is not glibc or when
    ``VISIONA_MALLOC_TUNING=0`` (or the ``MALLOC_*_`` variables already decide)."""
    if os.environ.get("VISIONA_MALLOC_TUNING", "1") == "0":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(
            _M_TRIM_THRESHOLD, trim_threshold
        )
    except (OSError, AttributeError):
        return False
    _LOGGER.debug("malloc thresholds tuned: %s", bool(ok))
    return bool(ok)
