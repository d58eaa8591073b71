"""Start-up time of the `visiona` command next to `python -c pass`, measured in the same run.

Each command runs as a fresh process of the venv's interpreter, the rounds
interleaved (floor, then each command, then the floor again ...) so that load on
this shared machine hits every figure alike. Printed: median and range of
``ROUNDS`` runs in ms and the ratio of the median to the floor's median. The
targets of issue 11 are 0.5 s for `--help` and `devices list --help` and 0.3 s for
`--version` on an idle machine; the ratio is the figure to compare across runs.

Reproduce: ``.venv/bin/python -m bench cli`` (env ``CLI_BENCH_ROUNDS``, default 7).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

ROUNDS = int(os.environ.get("CLI_BENCH_ROUNDS", "7"))
CASES = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "visiona --version": [sys.executable, "-m", "visiona", "--version"],
    "visiona --help": [sys.executable, "-m", "visiona", "--help"],
    "visiona devices list --help": [sys.executable, "-m", "visiona", "devices", "list", "--help"],
    "visiona agent --help": [sys.executable, "-m", "visiona", "agent", "--help"],
}


def _once(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    """Print every case's median, range and ratio to the floor."""
    env_note = f"{ROUNDS} interleaved rounds, fresh process each"
    times: dict[str, list[float]] = {label: [] for label in CASES}
    for argv in CASES.values():  # warm the page cache and .pyc files once
        _once(argv)
    for _ in range(ROUNDS):
        for label, argv in CASES.items():
            times[label].append(_once(argv))
    floor = statistics.median(times["python -c pass (floor)"])
    print(f"CLI start-up ({env_note}; load average {os.getloadavg()[0]:.1f})")
    for label, values in times.items():
        med = statistics.median(values)
        print(
            f"{label:<34} median {med * 1000:7.0f} ms  range {min(values) * 1000:5.0f}-"
            f"{max(values) * 1000:5.0f} ms  x{med / floor:5.1f} of the floor"
        )
