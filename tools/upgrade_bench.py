"""Time the upgrade of a legacy database and measure the disk it needs on the way.

Usage::

    python tools/upgrade_bench.py [--tasks 100000] [--runs 3]

Each run writes a legacy file with the test suite's builder (``tests/legacy.py``:
every task with one agent and one audit row), opens it with ``abathur_db.open``,
and reports the time the open took and the peak extra disk: the largest total
size, sampled every 5 ms, of the database, its -wal and -shm files and the
backup, minus the legacy file's own size. Medians of the runs are printed last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import abathur_db  # noqa: E402
from legacy import build_large_legacy  # noqa: E402


def _folder_size(folder: str) -> int:
    total = 0
    for name in os.listdir(folder):
        try:
            total += os.path.getsize(os.path.join(folder, name))
        except FileNotFoundError:  # a partial file renamed or removed meanwhile
            pass
    return total


def measure(tasks: int) -> tuple[float, int, int]:
    """Return (seconds, peak extra bytes, legacy file bytes) for one upgrade of a `tasks`-task legacy file."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "legacy.db")
        build_large_legacy(path, tasks)
        base = _folder_size(folder)
        peak, done = [base], threading.Event()

        def sample() -> None:
            while not done.wait(0.005):
                peak[0] = max(peak[0], _folder_size(folder))

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        try:
            abathur_db.open(path).close()
        finally:
            elapsed = time.perf_counter() - started
            done.set()
            sampler.join()
        return elapsed, max(peak[0], _folder_size(folder)) - base, base


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print one line per run, then the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    results = []
    for run in range(1, args.runs + 1):
        seconds, extra, legacy = measure(args.tasks)
        results.append((seconds, extra))
        print(f"run {run}: {args.tasks} tasks, legacy file {legacy / 2**20:.1f} MiB: upgrade {seconds:.2f} s, "
              f"peak extra disk {extra / 2**20:.1f} MiB", flush=True)
    print(f"median of {args.runs}: upgrade {statistics.median(s for s, _ in results):.2f} s, "
          f"peak extra disk {statistics.median(e for _, e in results) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
