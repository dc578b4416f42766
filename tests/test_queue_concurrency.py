"""The task queue under contention: threads and processes claiming from one database file."""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import abathur_db
from abathur_db import tasks, transaction
from helpers import on_data_version

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
        tasks.complete(conn, task["id"], task["lease"], {"pid": os.getpid(), "thread": threading.get_ident()})
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


# --- the worker contract across processes ---------------------------------------------------


def _owner(path: str, commands, results) -> None:
    """In a worker process: run each (operation, task_id, lease, argument) command; send back its outcome."""
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        while (command := commands.get(timeout=TIMEOUT)) is not None:
            operation, task_id, lease, argument = command
            try:
                if operation == "claim":
                    outcome = tasks.claim_next(conn)
                elif operation == "complete":
                    outcome = tasks.complete(conn, task_id, lease, argument)
                else:
                    outcome = getattr(tasks, operation)(conn, task_id, lease)
            except abathur_db.AbathurDBError as exc:
                outcome = (type(exc).__name__, str(exc))
            results.put(outcome)


def test_a_stale_worker_cannot_touch_the_task_a_new_owner_holds(pool, db_path):
    """Two processes: the first owner, requeued as stale, gets LeaseLostError for every call; the new run stands."""
    conn = pool.connection()
    task = tasks.create(conn, "slow work", max_execution_timeout_seconds=1)
    context = multiprocessing.get_context("spawn")
    owners = [(context.Queue(), context.Queue()) for _ in range(2)]
    processes = [context.Process(target=_owner, args=(str(db_path), *queues)) for queues in owners]
    for process in processes:
        process.start()

    def ask(owner: int, *command):
        commands, results = owners[owner]
        commands.put(command)
        return results.get(timeout=TIMEOUT)

    try:
        first = ask(0, "claim", None, None, None)
        assert [t["id"] for t in tasks.requeue_stale(conn, now="2100-01-01T00:00:00Z")] == [task["id"]]
        second = ask(1, "claim", None, None, None)
        assert second["id"] == task["id"] and second["lease"] != first["lease"]
        for operation in ("heartbeat", "complete", "release"):
            error, message = ask(0, operation, task["id"], first["lease"], {"by": "first"})
            assert error == "LeaseLostError" and "running under another lease" in message, message
            assert tasks.get(conn, task["id"]) == second
        done = ask(1, "complete", task["id"], second["lease"], {"by": "second"})
        assert (done["status"], done["result_data"], done["retry_count"]) == ("completed", {"by": "second"}, 1)
    finally:
        for commands, _ in owners:
            commands.put(None)
        for process in processes:
            process.join(TIMEOUT)
    assert [process.exitcode for process in processes] == [0, 0]


def _release_all(path: str, held: list[tuple[str, str]], releasing, results) -> None:
    """In a worker process: release each held task as fast as it can; send back which releases succeeded."""
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        released = []
        for task_id, lease in held:
            try:
                tasks.release(conn, task_id, lease)
                released.append(task_id)
            except abathur_db.LeaseLostError:
                pass
            releasing.set()
        results.put(released)


def test_release_racing_requeue_stale_ends_each_run_once(pool, db_path):
    """A process releasing 300 tasks while another requeues them as stale: each run ends once, by one of the two.

    Task i times out after i + 1 seconds; once the releases have begun from the last
    timeout down, the requeues step through time from the first one up, so they meet.
    """
    conn = pool.connection()
    ids = tasks.create_many(conn, [{"prompt": f"t{i}", "max_execution_timeout_seconds": i + 1}
                                   for i in range(300)])
    claimed = [tasks.claim_next(conn) for _ in ids]
    held = [(task["id"], task["lease"]) for task in claimed]
    claimed_at = datetime.datetime.fromisoformat(max(task["last_updated_at"] for task in claimed))
    context = multiprocessing.get_context("spawn")
    releasing, results = context.Event(), context.Queue()
    releaser = context.Process(target=_release_all, args=(str(db_path), held[::-1], releasing, results))
    releaser.start()
    assert releasing.wait(TIMEOUT)
    # As once a BEGIN has met the other process: BEGIN retries every step. A first BEGIN
    # waiting in SQLite's busy handler could sleep past every release (1, 2, 5, 10, 15 ms ...).
    conn.write_lock.busy_until = time.monotonic() + 60
    requeued = []
    for seconds in range(1, 302):
        now = claimed_at + datetime.timedelta(seconds=seconds, milliseconds=1)
        requeued += [t["id"] for t in tasks.requeue_stale(conn, now=now)]
    released = results.get(timeout=TIMEOUT)
    releaser.join(TIMEOUT)
    assert released and requeued, "the race never happened: one side ended every run"
    assert sorted(released + requeued) == sorted(ids)  # every run ended exactly once
    rows = {i: (s, r, lease) for i, s, r, lease in conn.execute("SELECT id, status, retry_count, lease FROM tasks")}
    assert {i: row for i, row in rows.items() if i in released} == {i: ("pending", 0, None) for i in released}
    assert {i: row for i, row in rows.items() if i in requeued} == {i: ("pending", 1, None) for i in requeued}


def _wait_for_work(path: str, waiting, results) -> None:
    """In a worker process: claim with a long wait, saying when it waits; send back what it claimed."""
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        conn.set_trace_callback(on_data_version(waiting))
        task = tasks.claim_next(conn, wait=60)
        conn.set_trace_callback(None)
        results.put(task and task["id"])


def test_a_waiting_worker_is_woken_by_a_commit_in_another_process(pool, db_path):
    """A worker process waiting in claim_next(wait=60) claims a task another process commits, long before 60 s."""
    context = multiprocessing.get_context("spawn")
    waiting, results = context.Event(), context.Queue()
    worker = context.Process(target=_wait_for_work, args=(str(db_path), waiting, results))
    worker.start()
    try:
        assert waiting.wait(TIMEOUT)
        created = tasks.create(pool.connection(), "arrives")
        assert results.get(timeout=10) == created["id"]
    finally:
        worker.join(TIMEOUT)
    assert tasks.get(pool.connection(), created["id"])["status"] == "running"


def _readme_example(heading: str) -> str:
    """Return the first Python code block of the README after `heading`."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("\n```", start)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_readme_worker_hands_back_its_tasks_when_signalled(tmp_path, signum):
    """The README's worker example, run as a process and signalled mid-work, exits 0 leaving no task running."""
    path = tmp_path / "worker.db"
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        ids = tasks.create_many(conn, [{"prompt": f"job {i}", "agent_type": "coder", "input_data": {"steps": 600}}
                                       for i in range(6)])
        worker = subprocess.Popen([sys.executable, "-c", _readme_example("#### Example: a worker process")],
                                  cwd=Path(__file__).resolve().parent.parent, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "ABATHUR_DB": str(path)})
        try:
            deadline = time.monotonic() + TIMEOUT
            while tasks.counts(conn)["running"] < 4:  # each of its four threads holds a task
                assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read()
                time.sleep(0.05)
            worker.send_signal(signum)
            _, stderr = worker.communicate(timeout=TIMEOUT)
        finally:
            worker.kill()
        assert worker.returncode == 0, stderr
        rows = conn.execute("SELECT status, retry_count, started_at, lease FROM tasks").fetchall()
        assert rows == [("pending", 0, None, None)] * len(ids)
