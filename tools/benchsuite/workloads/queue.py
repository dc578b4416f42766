"""The queue workloads of SPEC §6 against the physical anchor: put, bulk, claim + complete (1 thread,
10 threads, 3 processes × 4 threads), each on the minimal raw queue, raw SQL on the package's schema
and the package (see queues.py), N items per workload, every side on a fresh file of its own. The
claim workloads also run the package's worker with complete_and_claim (one transaction a task).
Beside them, with no bar, 3 processes of one worker thread each (ONE_THREAD)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import tempfile
import math
import threading

from abathur_db import _checkpointer
from abathur_db.errors import AbathurDBError, BusyError

from ..ops import Bench
from ..queues import PROCESSES_ONLY, SIDES, TITLES, WORKER_VARIANTS, items
from ..raw import Tuning
from ..timing import CLOCK, latency, progress, ratio

THREADS = 10
PROCESSES, PROCESS_THREADS = 3, 4
BLOCK = 100  # single-thread workloads: items per side before the next side's turn
BULK_REPEATS = 3  # per side and run, each on a fresh file; the median counts
MAX_ERRORS = 100  # a worker gives up after this many failed calls
TIMEOUT = 900  # seconds; only reached if a worker hangs
SIDE_NAMES = tuple(SIDES)
CLAIM_SIDES = SIDE_NAMES + tuple(WORKER_VARIANTS)
IN_PROCESS_SIDES = tuple(side for side in CLAIM_SIDES if side not in PROCESSES_ONLY)  # claims by one process
QUEUES = {**SIDES, **WORKER_VARIANTS}
# (key, title, bar on the ratio to the minimal queue, bar on the per-task p99 in ms or None)
WORKLOADS = (
    ("put", "put: one task per commit", 0.5, None),
    ("bulk", "bulk: N tasks in one call", 0.25, None),
    ("claim_1", "claim + complete, 1 thread", 0.6, None),
    ("threads", f"claim + complete, {THREADS} threads", 0.5, 15),
    ("processes", f"claim + complete, {PROCESSES} processes × {PROCESS_THREADS} threads", 0.5, 20),
)
# Measured beside them, with no bar: processes of one worker thread each, as workers often run.
ONE_THREAD = ("processes_1", f"claim + complete, {PROCESSES} processes × 1 thread")
ONE_THREAD_SIDES = ("minimal", "raw_schema_fused", "raw_schema_turns", "package_fused")
FRAME_ITEMS = 200  # puts and claims per side whose WAL pages are counted


def measure(bench: Bench) -> dict:
    """Run the five workloads on the three sides for each N of the scale; return figures by N."""
    result = {}
    for n in bench.scale.queue_items:
        root = tempfile.mkdtemp(prefix="queue-", dir=bench.workdir)
        try:
            figures = {}
            for key, title, *_ in (*WORKLOADS, ONE_THREAD):
                progress(f"  {title}, N = {n:,}")
                figures[key] = _with_ratios(_WORKLOAD_FUNCTIONS[key](bench, n, root))
            progress(f"  WAL pages per put and per claim + complete, N = {n:,}")
            figures["wal_frames"] = _wal_frames(bench, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        result[str(n)] = figures
    return result


def _with_ratios(sides: dict) -> dict:
    """Add each side's throughput ratio to the minimal queue, and the package's to raw SQL on its schema."""
    anchor = sides["minimal"]["ops_per_s"]
    for side in sides.values():
        side["ratio_to_minimal"] = ratio(side["ops_per_s"], anchor)
    if "package" in sides:
        sides["package_vs_raw_schema"] = ratio(sides["package"]["ops_per_s"], sides["raw_schema"]["ops_per_s"])
    if "package_fused" in sides:
        sides["package_fused_vs_raw_schema_fused"] = ratio(sides["package_fused"]["ops_per_s"],
                                                           sides["raw_schema_fused"]["ops_per_s"])
    for raw in ("raw_schema_locked", "raw_schema_turns"):
        if raw in sides:
            sides[f"package_fused_vs_{raw}"] = ratio(sides["package_fused"]["ops_per_s"], sides[raw]["ops_per_s"])
    if "package_sqlite_wait" in sides:
        sides["package_sqlite_wait_vs_raw_schema_fused"] = ratio(sides["package_sqlite_wait"]["ops_per_s"],
                                                                 sides["raw_schema_fused"]["ops_per_s"])
    return sides


def _wal_frames(bench: Bench, root: str) -> dict:
    """Count the WAL pages each side writes per put and per claim + complete, with checkpoints off.

    The package's background checkpoints are off too: one that let the WAL start again
    from its beginning would leave fewer frames in it than were written.
    """
    result = {}
    batch = items(FRAME_ITEMS)
    every, _checkpointer.CHECKPOINT_EVERY = _checkpointer.CHECKPOINT_EVERY, math.inf
    try:
        for side in IN_PROCESS_SIDES:
            queue = _open(bench, root, side, "frames", fill=FRAME_ITEMS)[0]
            conn = queue.connection()
            conn.execute("PRAGMA wal_autocheckpoint = 0").fetchall()
            counts = {}
            if side in SIDES:
                counts["put"] = _frames(conn, lambda: [queue.put(conn, item) for item in batch])
            counts["work"] = _frames(conn, lambda: [queue.work_one(conn) for _ in batch])
            queue.close()
            result[side] = {kind: round(count / FRAME_ITEMS, 2) for kind, count in counts.items()}
    finally:
        _checkpointer.CHECKPOINT_EVERY = every
    return result


def _frames(conn: sqlite3.Connection, run) -> int:
    """Return how many WAL frames run() writes, from an empty WAL."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    run()
    return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


def _open(bench: Bench, root: str, side: str, label: str, fill: int = 0):
    """Create a fresh file for `side`, fill it with `fill` items (untimed); return the side's queue and path."""
    path = os.path.join(root, f"{label}-{side}.db")
    QUEUES[side].create(path)
    queue = QUEUES[side](path, bench.tuning)
    # A new connection reads the schema at its first statement: untimed here, on every side alike.
    queue.connection().execute("SELECT count(*) FROM sqlite_master").fetchall()
    if fill:
        queue.bulk(queue.connection(), items(fill))
        queue.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return queue, path


def _order(turn: int, sides: tuple[str, ...] = SIDE_NAMES) -> tuple[str, ...]:
    """Return the sides in the order of this turn: each leads as often as the others."""
    k = turn % len(sides)
    return sides[k:] + sides[:k]


def _one_thread(bench: Bench, n: int, root: str, label: str, step, fill: int = 0,
                sides: tuple[str, ...] = SIDE_NAMES) -> dict[str, dict]:
    """Call step(queue, conn, i) for i < N on each side, one thread, sides alternating every BLOCK calls.

    Return per side its items/s (over the time spent in the calls), per-call latency and what the calls returned.
    """
    queues = {side: _open(bench, root, side, label, fill)[0] for side in sides}
    conns = {side: queue.connection() for side, queue in queues.items()}
    samples: dict[str, list[int]] = {side: [] for side in sides}
    returned: dict[str, list] = {side: [] for side in sides}
    gc.collect()
    gc.disable()
    try:
        for turn, start in enumerate(range(0, n, BLOCK)):
            for side in _order(turn, sides):
                queue, conn, times, got = queues[side], conns[side], samples[side], returned[side]
                for i in range(start, min(start + BLOCK, n)):
                    t0 = CLOCK()
                    got.append(step(queue, conn, i))
                    times.append(CLOCK() - t0)
    finally:
        gc.enable()
        for queue in queues.values():
            queue.close()
    return {side: {"ops_per_s": round(n / (sum(times) / 1e9), 1), "latency": latency(times),
                   "returned": returned[side]} for side, times in samples.items()}


def _put(bench: Bench, n: int, root: str) -> dict:
    """Put N items one per transaction on each side."""
    batch = items(n)
    sides = _one_thread(bench, n, root, "put", lambda queue, conn, i: queue.put(conn, batch[i]))
    for side in sides.values():
        del side["returned"]
    return sides


def _claim_1(bench: Bench, n: int, root: str) -> dict:
    """Claim and complete N items from one thread on each side's file, filled with N items beforehand."""
    sides = _one_thread(bench, n, root, "claim1", lambda queue, conn, i: queue.work_one(conn), fill=n,
                        sides=IN_PROCESS_SIDES)
    for side in sides.values():
        ids = side.pop("returned")
        side.update(workers=1, **_per_worker([len(ids) - ids.count(None)]), completed=len(ids) - ids.count(None),
                    duplicates=len(ids) - len(set(ids)),
                    lost=n - len(set(ids) - {None}), lock_errors=0, other_errors=0, error_examples=[])
    return sides


def _bulk(bench: Bench, n: int, root: str) -> dict:
    """Insert N items in one call on each side, BULK_REPEATS times on fresh files; the median call counts."""
    seconds: dict[str, list[float]] = {side: [] for side in SIDE_NAMES}
    batch = items(n)
    for repeat in range(BULK_REPEATS):
        for side in _order(repeat):
            queue = _open(bench, root, side, f"bulk{repeat}")[0]
            conn = queue.connection()
            gc.collect()
            t0 = CLOCK()
            queue.bulk(conn, batch)
            seconds[side].append((CLOCK() - t0) / 1e9)
            queue.close()
    return {side: {"ops_per_s": round(n / statistics.median(s), 1), "seconds": [round(v, 4) for v in s]}
            for side, s in seconds.items()}


def _work(queue, conn: sqlite3.Connection) -> dict:
    """Claim and complete until the queue is empty; return the ids, every call's time, errors and end time.

    Every call is timed, the final one that finds the queue empty and those that fail
    included: a worker kept waiting for the lock until the queue ran dry shows its wait.
    """
    ids, times, locked, errors = [], [], 0, []
    work_one = queue.work_one
    while locked + len(errors) < MAX_ERRORS:
        t0 = CLOCK()
        try:
            task_id = work_one(conn)
        except (AbathurDBError, sqlite3.Error) as exc:
            times.append(CLOCK() - t0)
            if isinstance(exc, BusyError) or "locked" in str(exc):
                locked += 1
            else:
                errors.append(repr(exc))
            continue
        times.append(CLOCK() - t0)
        if task_id is None:
            break
        ids.append(task_id)
    return {"ids": ids, "times": times, "locked": locked, "errors": errors, "ended": CLOCK()}


def _threads(queue, count: int, barrier) -> list[dict]:
    """Run `count` workers on threads of this process, each on its own connection, released by `barrier`."""
    results: list[dict] = [{} for _ in range(count)]

    def worker(k: int) -> None:
        try:
            conn = queue.connection()
            barrier.wait(TIMEOUT)
            results[k] = _work(queue, conn)
        except BaseException as exc:  # counted in the figures rather than lost in a thread's traceback
            results[k] = _failed(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    return results


def _child(side: str, path: str, tuning: Tuning, count: int, barrier, out) -> None:
    """In a worker process: open the side's queue, run `count` worker threads, send their results back."""
    try:
        queue = QUEUES[side](path, tuning)
        gc.disable()
        out.put(_threads(queue, count, barrier))
        queue.close()
    except BaseException as exc:  # reported to the parent rather than lost in a child's stderr
        out.put([_failed(exc)])
        raise


def _failed(exc: BaseException) -> dict:
    """Return the results of a worker that failed before or outside its loop."""
    return {"ids": [], "times": [], "locked": 0, "errors": [repr(exc)], "ended": CLOCK()}


def _claims(bench: Bench, n: int, root: str, processes: int, threads: int, label: str,
            sides: tuple[str, ...] | None = None) -> dict:
    """Fill each side's fresh file with N items, then claim + complete them all with the given workers."""
    figures = {}
    for side in _order(n + processes + threads, sides or (CLAIM_SIDES if processes > 1 else IN_PROCESS_SIDES)):
        queue, path = _open(bench, root, side, label, fill=n)
        results: list[dict] = []
        gc.collect()
        gc.disable()
        try:
            if processes == 1:
                barrier = threading.Barrier(threads + 1)
                runner = threading.Thread(target=lambda: results.extend(_threads(queue, threads, barrier)))
                runner.start()
                barrier.wait(TIMEOUT)
                started = CLOCK()
                runner.join(TIMEOUT)
            else:
                queue.close()
                results, started = _in_processes(bench.tuning, side, path, processes, threads)
        finally:
            gc.enable()
        queue.close()
        figures[side] = _summary(results, n, started)
    return figures


def _in_processes(tuning: Tuning, side: str, path: str, processes: int, threads: int) -> tuple[list[dict], int]:
    """Run `processes` spawned processes of `threads` workers each; return their results and the start time."""
    context = multiprocessing.get_context("spawn")  # no inherited connections, as workers really start
    barrier, out = context.Barrier(processes * threads + 1), context.Queue()
    children = [context.Process(target=_child, args=(side, path, tuning, threads, barrier, out))
                for _ in range(processes)]
    for child in children:
        child.start()
    barrier.wait(TIMEOUT)
    started = CLOCK()  # CLOCK is the system-wide monotonic clock: children's end times compare with it
    results = [result for _ in children for result in out.get(timeout=TIMEOUT)]
    for child in children:
        child.join(TIMEOUT)
    return results, started


def _summary(results: list[dict], n: int, started: int) -> dict:
    ids = [i for r in results for i in r["ids"]]
    errors = [e for r in results for e in r["errors"]]
    wall = max(r["ended"] for r in results) - started
    return {
        "workers": len(results), **_per_worker([len(r["ids"]) for r in results]),
        "completed": len(ids), "duplicates": len(ids) - len(set(ids)),
        "lost": n - len(set(ids)), "lock_errors": sum(r["locked"] for r in results), "other_errors": len(errors),
        "error_examples": errors[:3], "ops_per_s": round(len(ids) / (wall / 1e9), 1) if wall > 0 else None,
        "latency": latency([t for r in results for t in r["times"]]),
    }


def _per_worker(counts: list[int]) -> dict:
    """Return the fewest, median and most items one worker did, and how many workers did none (starved)."""
    return {"per_worker_min": min(counts), "per_worker_median": statistics.median_low(counts),
            "per_worker_max": max(counts), "idle_workers": counts.count(0)}


_WORKLOAD_FUNCTIONS = {
    "put": _put,
    "bulk": _bulk,
    "claim_1": _claim_1,
    "threads": lambda bench, n, root: _claims(bench, n, root, 1, THREADS, "threads"),
    "processes": lambda bench, n, root: _claims(bench, n, root, PROCESSES, PROCESS_THREADS, "processes"),
    "processes_1": lambda bench, n, root: _claims(bench, n, root, PROCESSES, 1, "processes_1", ONE_THREAD_SIDES),
}
