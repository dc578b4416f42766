"""A write after a pause, beside a process writing in a loop: how long the paused writer waits for the lock.

A process writes audit rows back to back; this one records an audit row every GAP_S, as
an occasional writer (a supervisor, a heartbeat) does. Raw sqlite3 waits in SQLite's
busy handler, whose sleeps grow to 100 ms: each time it wakes, the looping writer most
likely holds the lock again, and a write can wait seconds, up to busy_timeout. The
package's BEGIN after a pause (pool.PAUSE_SECONDS) retries every millisecond instead.
Each side runs on a new database of its own; no SPEC bar, the figures are for context.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time

import abathur_db
from abathur_db import audit
from abathur_db.errors import BusyError

from ..markdown import Markdown, us
from ..ops import Bench
from ..raw import Tuning, raw_connect, raw_write
from ..timing import CLOCK, latency, progress

# Longer than pool.BUSY_SECONDS: each write comes to a file on which the process has seen
# no other writer for that long (after shorter gaps it still takes turns, having waited).
GAP_S = 1.2
WRITES = {"tiny": 3, "small": 5}  # per side and run; 15 at larger scales
TIMEOUT = 600  # seconds; only reached if something hangs
SIDES = ("package", "raw")
_INSERT = "INSERT INTO audit (timestamp, action_type) VALUES (strftime('%Y-%m-%dT%H:%M:%fZ'), :action)"


def measure(bench: Bench) -> dict:
    """Time the paused writes of each side beside its looping writer."""
    writes = WRITES.get(bench.scale.name, 15)
    figures: dict = {"gap_s": GAP_S, "writes": writes}
    for side in SIDES:
        progress(f"  {side}: {writes} writes {GAP_S} s apart beside a process writing in a loop")
        path = os.path.join(bench.workdir, f"paused_write_{side}.db")
        abathur_db.open(path).close()  # the schema
        try:
            figures[side] = _beside_a_loop(side, path, bench.tuning, writes)
        finally:
            for suffix in ("", "-wal", "-shm", "-lock"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
    return figures


def _beside_a_loop(side: str, path: str, tuning: Tuning, writes: int) -> dict:
    """Start the looping writer, time `writes` paused writes, stop it; return the figures of `side`."""
    context = multiprocessing.get_context("spawn")
    started, stop, counted = context.Event(), context.Event(), context.Queue()
    child = context.Process(target=_loop, args=(side, path, tuning, started, stop, counted))
    child.start()
    samples, lock_errors = [], 0
    try:
        while not started.wait(0.1):
            if not child.is_alive():
                raise RuntimeError(f"the looping writer ({side}) exited with {child.exitcode} before its first write")
        write, close = _writer(side, path, tuning)
        try:
            for _ in range(writes):
                time.sleep(GAP_S)
                t0 = CLOCK()
                try:
                    write("paused")
                except (BusyError, sqlite3.OperationalError):
                    lock_errors += 1
                samples.append(CLOCK() - t0)
        finally:
            close()
    finally:
        stop.set()
        looped, seconds = counted.get(timeout=TIMEOUT)
        child.join(TIMEOUT)
    return {"latency": latency(samples), "lock_errors": lock_errors,
            "loop_writes_per_s": round(looped / seconds, 1) if seconds else None}


def _writer(side: str, path: str, tuning: Tuning):
    """Return (write(action), close()) recording one audit row per call, through the package or raw sqlite3."""
    if side == "package":
        pool = abathur_db.open(path)
        conn = tuning.apply(pool.connection())
        return (lambda action: audit.record(conn, action)), pool.close
    raw = raw_connect(path, tuning)
    return (lambda action: raw_write(raw, _INSERT, {"action": action})), raw.close


def _loop(side: str, path: str, tuning: Tuning, started, stop, counted) -> None:
    """In a process of its own: write back to back until `stop`; put (writes, seconds) on `counted`."""
    looped, t0 = 0, time.monotonic()
    try:
        write, close = _writer(side, path, tuning)
        try:
            write("loop")  # the process's first write: past it, the loop is under way
            started.set()
            t0 = time.monotonic()
            while not stop.is_set():
                write("loop")
                looped += 1
        finally:
            close()
    finally:  # the parent waits for this, whatever happened here
        counted.put((looped, time.monotonic() - t0))


def report(figures: dict, md: Markdown) -> None:
    """Add the section: each side's paused writes, and the looping writer's pace."""
    pw = figures["paused_write"]
    md.heading("A write after a pause, beside a process writing in a loop")
    md.paragraph(f"One process records audit rows back to back; another records one every {pw['gap_s']} s",
                 f"({pw['writes']} a run, each timed), as an occasional writer such as a supervisor does: longer",
                 "than `pool.BUSY_SECONDS`, so that it has seen no other writer for that long. Raw sqlite3 waits",
                 "for the lock in SQLite's busy handler, whose sleeps grow to 100 ms: each time it wakes, the",
                 "looping writer most likely holds the lock again. The package's `BEGIN` after a pause",
                 "(`pool.PAUSE_SECONDS`) retries every millisecond instead; the first write of each run, the",
                 "process's first beside another writer, also holds the turn first, until the looping writer",
                 "takes turns too (`pool.ARRIVAL_SECONDS` at most).",
                 "Each side runs on a new database of its own; no SPEC bar.")
    rows = []
    for side in SIDES:
        s = pw[side]
        lat = s["latency"]
        rows.append([side, lat["n"], us(lat["median_us"]), us(lat["p99_us"]), us(lat["max_us"]), s["lock_errors"],
                     f"{s['loop_writes_per_s']:,.0f}" if s["loop_writes_per_s"] else "—"])
    md.table(["side", "paused writes", "median µs", "p99 µs", "max µs", "lock errors", "looping writer: writes/s"],
             rows)
