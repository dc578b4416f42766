"""The task queue under contention: threads and processes claiming from one database file."""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import threading

import abathur_db
from abathur_db import tasks, transaction

TASKS = 2_000
THREADS = 10
PROCESSES = 4
TIMEOUT = 120  # seconds; only reached if something hangs

_start_line = None  # the children's barriers, set by _init_child
_first_claims = None


def _drain(conn, first_claims) -> list[str]:
    """Claim and complete tasks until none is left; return the ids claimed.

    After its first claim each claimer waits on `first_claims` for every other one
    to have made its first, so that all of them really compete, whichever starts first.
    """
    claimed = []
    while (task := tasks.claim_next(conn)) is not None:
        claimed.append(task["id"])
        tasks.complete(conn, task["id"], {"pid": os.getpid(), "thread": threading.get_ident()})
        if len(claimed) == 1:
            first_claims.wait(TIMEOUT)
    return claimed


def _init_child(start_line, first_claims) -> None:
    """Keep the barriers, which a spawned child can only receive when it starts."""
    global _start_line, _first_claims
    _start_line, _first_claims = start_line, first_claims


def _drain_in_child(path: str) -> list[str]:
    """Open the database in this process, wait for everyone, then drain the queue."""
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        _start_line.wait(TIMEOUT)
        return _drain(conn, _first_claims)


def test_threads_and_processes_claim_each_task_exactly_once(pool, db_path):
    """10 threads and 4 processes draining 2,000 tasks claim each exactly once, without a lock error."""
    conn = pool.connection()
    with transaction(conn):
        ids = {tasks.create(conn, f"task {i}", priority=i % 11)["id"] for i in range(TASKS)}
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES + 1)
    first_claims = context.Barrier(PROCESSES + THREADS)
    go = threading.Event()

    def drain_in_thread() -> list[str]:
        """Wait for the start, then drain the queue on this thread's own connection."""
        assert go.wait(TIMEOUT)
        return _drain(pool.connection(), first_claims)

    with concurrent.futures.ProcessPoolExecutor(
        PROCESSES, mp_context=context, initializer=_init_child, initargs=(barrier, first_claims)
    ) as processes, concurrent.futures.ThreadPoolExecutor(THREADS) as threads:
        in_processes = [processes.submit(_drain_in_child, str(db_path)) for _ in range(PROCESSES)]
        in_threads = [threads.submit(drain_in_thread) for _ in range(THREADS)]
        try:
            barrier.wait(TIMEOUT)  # every child has its connection open: start everyone together
        finally:
            go.set()
        # .result() re-raises any error of a claimer, "database is locked" (BusyError) included.
        by_process = [future.result(timeout=TIMEOUT) for future in in_processes]
        by_thread = [future.result(timeout=TIMEOUT) for future in in_threads]

    claimed = [task_id for batch in by_process + by_thread for task_id in batch]
    duplicates = [task_id for task_id, n in collections.Counter(claimed).items() if n > 1]
    assert duplicates == [] and len(claimed) == TASKS
    assert set(claimed) == ids
    assert all(by_process) and all(by_thread)  # every claimer really competed
    statuses = dict(conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
    assert statuses == {"completed": TASKS}
