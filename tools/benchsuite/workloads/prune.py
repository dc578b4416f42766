"""Retention: two writers' latency beside audit.prune of the data set's audit rows, against the same writers alone.

The prune runs on a copy of the data set (so every run prunes the same rows). One
writer is a thread of the pruning process, the other a process of its own; each
records an audit row, pauses a millisecond, and again, first with no prune (the
baseline), then for as long as the prune takes.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time

import abathur_db
from abathur_db import _retention, audit

from ..dataset import ts
from ..markdown import Markdown, us
from ..ops import Bench
from ..raw import Tuning
from ..timing import CLOCK, progress, ratio, stats

TIMEOUT = 3600  # seconds; only reached if a writer hangs
BAR_P99_MS = 50  # SPEC §8 / issue: a writer beside a prune of 1M rows keeps its p99 under 50 ms
WRITE_PAUSE_S = 0.001
WRITERS = ("thread", "process")


def measure(bench: Bench) -> dict:
    """Copy the data set, time the writers alone, then beside a prune of every audit row it seeded."""
    path = os.path.join(bench.workdir, "prune.db")
    target = sqlite3.connect(path)
    bench.conn.backup(target)  # one consistent snapshot, whatever the WAL holds
    target.close()
    try:
        baseline_s = {"tiny": 0.5, "small": 2.0}.get(bench.scale.name, 5.0)
        progress(f"  writers alone for {baseline_s} s")
        alone, _ = _beside(path, bench.tuning, lambda conn: time.sleep(baseline_s))
        cutoff = ts(bench.data.now_ms)
        progress(f"  writers beside audit.prune(before={cutoff})")
        beside, (deleted, seconds) = _beside(path, bench.tuning, lambda conn: _timed_prune(conn, cutoff))
    finally:
        for suffix in ("", "-wal", "-shm", "-lock"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    return {
        "deleted": deleted,
        "seconds": round(seconds, 2),
        "rows_per_s": round(deleted / seconds, 1) if seconds else None,
        "batch_size": _retention.BATCH_SIZE,
        "baseline_s": baseline_s,
        "writers": {kind: {"alone": stats(alone[kind]), "beside_prune": stats(beside[kind]),
                           "p99_ratio": ratio(stats(beside[kind])["p99_us"], stats(alone[kind])["p99_us"])}
                    for kind in WRITERS},
    }


def _timed_prune(conn: sqlite3.Connection, cutoff: str) -> tuple[int, float]:
    t0 = time.monotonic()
    deleted = audit.prune(conn, before=cutoff)
    return deleted, time.monotonic() - t0


def _beside(path: str, tuning: Tuning, work) -> tuple[dict[str, list[int]], object]:
    """Run `work(conn)` while a writer thread and a writer process record audit rows; return their latencies."""
    context = multiprocessing.get_context("spawn")  # no inherited connections, as workers really start
    started, stop, queue = context.Barrier(3), context.Event(), context.Queue()
    latencies: dict[str, list[int]] = {}
    thread = threading.Thread(target=lambda: latencies.update(thread=_write(path, tuning, started, stop)))
    child = context.Process(target=_write_in_child, args=(path, tuning, started, stop, queue))
    thread.start()
    child.start()
    try:
        with abathur_db.open(path) as pool:
            conn = tuning.apply(pool.connection())
            started.wait(TIMEOUT)
            outcome = work(conn)
    finally:
        stop.set()
        thread.join(TIMEOUT)
        latencies["process"] = queue.get(timeout=TIMEOUT)
        child.join(TIMEOUT)
    return latencies, outcome


def _write(path: str, tuning: Tuning, started, stop) -> list[int]:
    """Record an audit row, pause, and again until `stop` is set; return each record's duration in ns."""
    times = []
    try:
        with abathur_db.open(path) as pool:
            conn = tuning.apply(pool.connection())
            started.wait(TIMEOUT)
            while not stop.is_set():
                t0 = CLOCK()
                audit.record(conn, "beside_prune", action_data={"step": len(times)})
                times.append(CLOCK() - t0)
                time.sleep(WRITE_PAUSE_S)
    except BaseException:
        started.abort()  # the others stop waiting for this writer at once
        raise
    return times


def _write_in_child(path: str, tuning: Tuning, started, stop, queue) -> None:
    """Write as _write does, in a process of its own; put the durations on `queue` (an empty list on failure)."""
    times: list[int] = []
    try:
        times = _write(path, tuning, started, stop)
    finally:  # the parent waits for this list, whatever happened here
        queue.put(times)


def report(figures: dict, md: Markdown) -> None:
    """Add the retention section: the prune's pace, and each writer's latency alone and beside it."""
    pr = figures["prune"]
    md.heading("Retention: a writer beside audit.prune")
    md.paragraph(f"`audit.prune(conn, before=…)` deleted {pr['deleted']:,} audit rows of a copy of the data set in",
                 f"{pr['seconds']:.1f} s ({pr['rows_per_s']:,.0f} rows/s), {pr['batch_size']} rows per write",
                 "transaction, the write lock left free between batches for as long as the batch held it.",
                 "Beside it, a thread of the same process and a process of its own each recorded an audit row",
                 f"every millisecond; the baseline is the same writers alone for {pr['baseline_s']} s.",
                 f"Bar: the writers' p99 beside the prune under {BAR_P99_MS} ms.")
    rows = []
    for kind, w in pr["writers"].items():
        p99 = w["beside_prune"]["p99_us"]
        met = p99 is not None and p99 < BAR_P99_MS * 1000
        rows.append([kind, w["alone"]["n"], us(w["alone"]["median_us"]), us(w["alone"]["p99_us"]),
                     w["beside_prune"]["n"], us(w["beside_prune"]["median_us"]), us(p99),
                     us(w["beside_prune"]["max_us"]), "**met**" if met else "**MISSED**"])
    md.table(["writer", "alone: n", "median µs", "p99 µs", "beside prune: n", "median µs", "p99 µs", "max µs",
              f"p99 < {BAR_P99_MS} ms"], rows)
