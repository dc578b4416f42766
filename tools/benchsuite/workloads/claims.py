"""claim_next: one thread against a raw loop, then ten threads and four processes claiming at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading

import abathur_db
from abathur_db import tasks
from abathur_db.errors import BusyError

from ..dataset import restore_claimed
from ..markdown import Markdown, per_s, us, x
from ..ops import Bench
from ..raw import Tuning
from ..timing import CLOCK, compare, latency, progress

TIMEOUT = 600  # seconds; only reached if a worker hangs
# One thread: calls a side makes before the other's turn, prime to the package's commits between
# background checkpoints (_checkpointer.CHECKPOINT_EVERY), so that a checkpoint's copying overlaps
# both sides' calls alike (see the README's Performance section).
BATCH = 47
THREADS = 10
PROCESSES = 4


def measure(bench: Bench) -> dict:
    """Claim from one thread (package and raw), then from 10 threads and from 4 processes."""
    progress("  claim_next, 1 thread")
    result = {"one_thread": _one_thread(bench)}
    progress(f"  claim_next, {THREADS} threads")
    result["threads"] = _threads(bench)
    progress(f"  claim_next, {PROCESSES} processes")
    result["processes"] = _processes(bench)
    return result


def _one_thread(bench: Bench) -> dict:
    """Compare claim_next with a raw BEGIN IMMEDIATE; UPDATE … RETURNING; COMMIT loop, in alternate batches."""
    op, conn = bench.ops["T2"], bench.conn
    size = min(BATCH, bench.scale.claims)
    batches = max(2, bench.scale.claims // size)
    batches += batches % 2  # each side leads equally often
    for _ in range(10):  # warm both code paths and the cache; not counted
        op.package(conn, None)
        op.raw(conn, None)
    package_ns: list[int] = []
    raw_ns: list[int] = []
    sides = ((package_ns, lambda: op.package(conn, None)), (raw_ns, lambda: op.raw(conn, None)))
    claimed = 0
    for number in range(batches):
        for times, call in (sides if number % 2 == 0 else sides[::-1]):
            for _ in range(size):
                t0 = CLOCK()
                got = call()
                times.append(CLOCK() - t0)
                claimed += bool(got)
    restore_claimed(conn, bench.data)
    result = compare(package_ns, raw_ns)
    result["claims"], result["batch"] = claimed, size
    return result


def _claim_loop(conn: sqlite3.Connection, count: int) -> dict:
    """Claim `count` tasks on `conn`; return the ids, lock errors, empty claims and latencies."""
    ids, latencies, locked, empty, other = [], [], 0, 0, []
    for _ in range(count):
        t0 = CLOCK()
        try:
            task = tasks.claim_next(conn)
        except BusyError:
            locked += 1
            continue
        except sqlite3.OperationalError as exc:  # a raw "database is locked" would land here
            if "locked" in str(exc):
                locked += 1
            else:
                other.append(repr(exc))
            continue
        latencies.append(CLOCK() - t0)
        if task is None:
            empty += 1
        else:
            ids.append(task["id"])
    return {"ids": ids, "locked": locked, "empty": empty, "errors": other, "latencies": latencies}


def _summary(results: list[dict], wall_ns: int, workers: int) -> dict:
    ids = [i for r in results for i in r["ids"]]
    latencies = [ns for r in results for ns in r["latencies"]]
    return {
        "workers": workers,
        "claims": len(ids),
        "duplicates": len(ids) - len(set(ids)),
        "lock_errors": sum(r["locked"] for r in results),
        "other_errors": sum(len(r["errors"]) for r in results),
        "empty_claims": sum(r["empty"] for r in results),
        "claims_per_s": round(len(ids) / (wall_ns / 1e9), 1) if wall_ns else None,
        "latency": latency(latencies),  # pooled over runs, see timing.latency
    }


def _threads(bench: Bench) -> dict:
    """Claim from 10 threads at once, each on its own connection; count duplicates and lock errors."""
    start = threading.Barrier(THREADS + 1)
    results: list[dict] = [{} for _ in range(THREADS)]

    def worker(k):
        conn = bench.tuning.apply(bench.pool.connection())
        start.wait(TIMEOUT)
        results[k] = _claim_loop(conn, bench.scale.claims_per_worker)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    start.wait(TIMEOUT)
    t0 = CLOCK()
    for t in threads:
        t.join(TIMEOUT)
    wall = CLOCK() - t0
    restore_claimed(bench.conn, bench.data)
    return _summary(results, wall, THREADS)


def _claim_in_child(path: str, count: int, tuning: Tuning, barrier, queue) -> None:
    """Open the database in this process, wait for the others, claim `count` tasks, report back."""
    try:
        with abathur_db.open(path) as pool:
            conn = tuning.apply(pool.connection())
            barrier.wait(TIMEOUT)
            queue.put(_claim_loop(conn, count))
    except BaseException as exc:  # reported to the parent rather than lost in a child's stderr
        queue.put({"ids": [], "locked": 0, "empty": 0, "errors": [repr(exc)], "latencies": []})
        raise


def _processes(bench: Bench) -> dict:
    """Claim from 4 processes at once, each with its own pool; count duplicates and lock errors."""
    context = multiprocessing.get_context("spawn")  # no inherited connections, as workers really start
    barrier = context.Barrier(PROCESSES + 1)
    queue = context.Queue()
    children = [context.Process(target=_claim_in_child,
                                args=(bench.path, bench.scale.claims_per_worker, bench.tuning, barrier, queue))
                for _ in range(PROCESSES)]
    for child in children:
        child.start()
    barrier.wait(TIMEOUT)
    t0 = CLOCK()
    results = [queue.get(timeout=TIMEOUT) for _ in children]
    wall = CLOCK() - t0
    for child in children:
        child.join(TIMEOUT)
    restore_claimed(bench.conn, bench.data)
    return _summary(results, wall, PROCESSES)


def report(figures: dict, md: Markdown) -> None:
    """Add the claim_next section: one thread against raw, then the concurrent claimers."""
    claim = figures["claim"]
    one = claim["one_thread"]
    md.heading("claim_next")
    md.table(["", "package", "raw loop", "ratio"], [
        ["1 thread: claims/s (from the median; from the mean)",
         f"{per_s(one['package'])}; {one['package']['ops_per_s']:,.0f}",
         f"{per_s(one['raw'])}; {one['raw']['ops_per_s']:,.0f}", x(one["throughput_ratio"])],
        ["1 thread: median / p99 µs", f"{us(one['package']['median_us'])} / {us(one['package']['p99_us'])}",
         f"{us(one['raw']['median_us'])} / {us(one['raw']['p99_us'])}", x(one["time_ratio"])],
    ])
    if "batch" in one:  # recorded since batches stopped being 50 calls
        md.paragraph(f"1 thread: `tasks.claim_next` and the raw loop on one connection, {one['claims']:,} claims a"
                     f" run between them, the sides alternating every {one['batch']} calls, a number prime to the"
                     " package's commits between background checkpoints, so that each checkpoint's copying overlaps"
                     " both sides' calls alike.")
    md.table(["workers", "claims", "duplicates", "lock errors", "other errors", "empty claims", "claims/s",
              "median µs", "p99 µs"],
             [[f"{c['workers']} {kind}", c["claims"], c["duplicates"], c["lock_errors"], c["other_errors"],
               c["empty_claims"], f"{c['claims_per_s']:,.0f}", us(c["latency"]["median_us"]),
               us(c["latency"]["p99_us"])]
              for kind, c in (("threads", claim["threads"]), ("processes", claim["processes"]))])
