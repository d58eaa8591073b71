"""Run every benchmark module (`bench/bench_*.py`), or those named on the command line.

Usage: ``python -m bench [name ...]`` where a name is the part after ``bench_``.
Each module exposes ``main() -> None`` and prints its own figures, always next to
a reference measured in the same run, because this machine is shared and noisy.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def _modules() -> list[str]:
    return sorted(
        info.name.removeprefix("bench_")
        for info in pkgutil.iter_modules(bench.__path__)
        if info.name.startswith("bench_")
    )


def run(names: list[str]) -> int:
    """Run the named benchmarks (all when empty); return a process exit code."""
    available = _modules()
    chosen = names or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}")
        return 2
    for name in chosen:
        print(f"\n=== bench {name} (reproduce: .venv/bin/python -m bench {name}) ===", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.bench_{name}")
        module.main()
        print(f"--- {name} took {time.perf_counter() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
