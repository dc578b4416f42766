"""Reliability: crashes, a full disk, lock waits, fork, thread churn and WAL growth lose nothing.

Real processes, threads and database files. Timing is never asserted beyond a generous
window around busy_timeout; synchronisation uses events, pipes and futures with
timeouts. The crash test kills its children at seeded random moments: the seed is in
every failure message (set ABATHUR_CRASH_SEED to replay one).
"""

from __future__ import annotations

import concurrent.futures
import gc
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import abathur_db
from abathur_db import agents, audit, checkpoints, metrics, sessions, state, tasks, transaction
from abathur_db import pool as pool_module
from abathur_db.errors import AbathurDBError, BusyError, StorageFullError
from abathur_db.pool import PRAGMAS
from helpers import fork_child, tracing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(abathur_db.__file__)))
TIMEOUT = 60  # seconds; reached only when something hangs
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _python(script: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start `script` in a new interpreter that imports this checkout's abathur_db."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT, env=env,
                            text=True, **kwargs)


def _count(conn, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _wal_size(db_path) -> int:
    return os.path.getsize(f"{db_path}-wal")


# ---------------------------------------------------------------------------------------
# Crash safety: SIGKILL at random moments.

CRASH_CHILD = """
    import random, sys
    import abathur_db
    from abathur_db import audit, checkpoints, state, tasks, transaction

    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        previous = None
        print("ready", flush=True)
        for i in range(10**9):
            pad = "x" * rng.randrange(6000)  # makes the WAL grow, so checkpoints run too
            kind = rng.randrange(3)
            if kind == 0:  # a task in its own transaction, linked to the previous one
                task = tasks.create(conn, f"single {seed}/{i}", parent_task_id=previous, input_data={"pad": pad})
                print("task", task["id"], flush=True)
            elif kind == 1 and previous is not None:  # an audit row in its own transaction
                row = audit.record(conn, "step", task_id=previous, action_data={"i": i, "pad": pad})
                print("audit", row["id"], flush=True)
                continue
            else:  # a task, its audit row, state and checkpoint: all or nothing
                with transaction(conn):
                    task = tasks.create(conn, f"group {seed}/{i}", dependencies=[previous] if previous else [])
                    row = audit.record(conn, "created", task_id=task["id"], action_data={"pad": pad})
                    state.set(conn, task["id"], "i", i)
                    checkpoints.save(conn, task["id"], 0, {"i": i})
                print("group", task["id"], row["id"], flush=True)
            previous = task["id"]
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_committed_row(db_path):
    """25 children killed by SIGKILL at random moments: after each, the file is sound and every printed id is there."""
    seed = int(os.environ.get("ABATHUR_CRASH_SEED") or random.SystemRandom().randrange(1, 2**31))
    rng = random.Random(seed)
    print(f"crash test seed: {seed} (ABATHUR_CRASH_SEED={seed} replays it)")
    task_ids: set[str] = set()
    audit_ids: set[int] = set()
    groups: list[str] = []
    landed = {"startup": 0, "working": 0}
    for kill in range(25):
        where = f"seed {seed}, kill {kill}"
        child = _python(CRASH_CHILD, str(db_path), str(rng.randrange(2**31)),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines: list[str] = []
        ready = threading.Event()  # set by the child's first line ("ready"), or by its end

        def read(stream=child.stdout, lines=lines, ready=ready):
            for line in stream:
                lines.append(line)
                ready.set()
            ready.set()

        reader = threading.Thread(target=read)
        reader.start()
        if rng.random() < 0.25:  # sometimes while it imports, opens or upgrades the file
            delay = rng.uniform(0.0, 0.3)
        else:
            assert ready.wait(TIMEOUT), where
            delay = rng.uniform(0.0, 0.4)
        try:
            child.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=TIMEOUT) == -signal.SIGKILL, f"{where}: {child.stderr.read()}"
        reader.join(timeout=TIMEOUT)
        child.stdout.close()
        child.stderr.close()
        landed["working" if lines else "startup"] += 1
        for line in lines:
            if not line.endswith("\n"):
                continue  # cut short by the kill: printed after no COMMIT we can rely on
            kind, *ids = line.split()
            if kind == "task":
                task_ids.add(ids[0])
            elif kind == "audit":
                audit_ids.add(int(ids[0]))
            elif kind == "group":
                task_ids.add(ids[0])
                audit_ids.add(int(ids[1]))
                groups.append(ids[0])

        with abathur_db.open(db_path) as pool:
            conn = pool.connection()
            assert abathur_db.integrity_check(conn) == [], where
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == [], where
            stored_tasks = {i for (i,) in conn.execute("SELECT id FROM tasks")}
            stored_audit = {i for (i,) in conn.execute("SELECT id FROM audit")}
            assert task_ids - stored_tasks == set(), where
            assert audit_ids - stored_audit == set(), where
            # A group is all or nothing, printed or not: no task of one lacks its other rows.
            partial = conn.execute(
                "SELECT id FROM tasks WHERE prompt LIKE 'group %' AND ("
                " NOT EXISTS (SELECT 1 FROM state WHERE task_id = tasks.id)"
                " OR NOT EXISTS (SELECT 1 FROM checkpoints WHERE task_id = tasks.id)"
                " OR NOT EXISTS (SELECT 1 FROM audit WHERE task_id = tasks.id AND action_type = 'created'))"
            ).fetchall()
            assert partial == [], where
            after = tasks.create(conn, f"written after kill {kill}")
            task_ids.add(after["id"])
            audit_ids.add(audit.record(conn, "survived", task_id=after["id"])["id"])
    assert len(groups) > 0 and landed["working"] >= 10, (seed, landed)


# ---------------------------------------------------------------------------------------
# Full disk, simulated with max_page_count on the writing connection.


def _limit_pages(conn, extra: int = 0) -> None:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + extra}").fetchall()


def _make_room(conn) -> None:
    conn.execute("PRAGMA max_page_count = 4294967294").fetchall()


BIG = "x" * 200_000  # needs some 50 new pages


def test_full_disk_refuses_the_write_keeps_earlier_rows_and_recovers(conn):
    """A write needing pages the file cannot get raises StorageFullError, storing nothing; room brings writes back."""
    kept = tasks.create(conn, "kept", input_data={"n": 1})
    audit.record(conn, "kept", task_id=kept["id"])
    before = {table: _count(conn, table) for table in ("tasks", "audit", "state")}
    _limit_pages(conn)
    with pytest.raises(StorageFullError, match="full"):
        tasks.create(conn, "too big", input_data={"blob": BIG})
    with pytest.raises(StorageFullError):
        state.set(conn, kept["id"], "blob", BIG)
    assert not conn.in_transaction
    assert {table: _count(conn, table) for table in before} == before
    assert tasks.get(conn, kept["id"]) == kept
    assert abathur_db.integrity_check(conn) == []
    _make_room(conn)
    stored = tasks.create(conn, "fits now", input_data={"blob": BIG})
    assert tasks.get(conn, stored["id"])["input_data"] == {"blob": BIG}
    assert state.set(conn, kept["id"], "blob", BIG)["value"] == BIG


def _own_sql_insert(conn, parent: str) -> None:
    """A caller's own statement inside a block: no RETURNING, so no statement journal."""
    conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES (?, 1)", (BIG,))


@pytest.mark.parametrize("failing, rollbacks", [
    # The package's writes carry RETURNING, so SQLite has a statement journal for them and
    # undoes the failed statement alone; the blocks then roll back what remains.
    pytest.param(lambda conn, parent: tasks.create(conn, "child", dependencies=[parent], input_data={"blob": BIG}),
                 ["ROLLBACK TO abathur_db", "RELEASE abathur_db", "ROLLBACK"], id="task-with-dependencies"),
    pytest.param(lambda conn, parent: audit.record(conn, "big", task_id=parent, action_data={"blob": BIG}),
                 ["ROLLBACK"], id="audit-row"),
    pytest.param(lambda conn, parent: metrics.record(conn, "big", 1, labels={"blob": BIG}),
                 ["ROLLBACK"], id="metric-row"),
    # Without a statement journal SQLite can only roll back the whole transaction itself;
    # transaction() then sends no ROLLBACK (it would fail: no transaction is active).
    pytest.param(_own_sql_insert, [], id="callers-own-statement"),
])
def test_full_disk_in_a_callers_transaction_rolls_back_all_of_it(conn, failing, rollbacks):
    """A full disk inside a caller's block stores nothing of the block, whoever rolls it back; with room it fits."""
    first = tasks.create(conn, "committed before")
    before = {table: _count(conn, table) for table in ("tasks", "audit", "checkpoints", "metrics")}
    _limit_pages(conn, extra=2)
    with tracing(conn) as sent:
        with pytest.raises(StorageFullError):
            with transaction(conn):
                parent = tasks.create(conn, "parent", parent_task_id=first["id"])
                checkpoints.save(conn, parent["id"], 0, {"planned": True})
                try:
                    failing(conn, parent["id"])
                except sqlite3.OperationalError as exc:  # the caller's own statement: raw sqlite3
                    raise StorageFullError(str(exc)) from exc
    assert [sql for sql in sent if sql.startswith(("ROLLBACK", "RELEASE"))] == rollbacks
    assert not conn.in_transaction
    assert {table: _count(conn, table) for table in before} == before
    _make_room(conn)
    with transaction(conn):
        parent = tasks.create(conn, "parent", parent_task_id=first["id"])
        checkpoints.save(conn, parent["id"], 0, {"planned": True})
        failing(conn, parent["id"])
    assert sum(_count(conn, table) for table in before) == sum(before.values()) + 3


def test_a_failed_package_write_leaves_the_callers_transaction_usable(conn):
    """StorageFullError from one write undoes that write alone: a caller who carries on commits the rest."""
    _limit_pages(conn, extra=2)
    with transaction(conn):
        kept = tasks.create(conn, "first of the block")
        with pytest.raises(StorageFullError):
            metrics.record(conn, "big", 1, labels={"blob": BIG})
        with pytest.raises(StorageFullError):
            with transaction(conn):
                audit.record(conn, "planned", task_id=kept["id"])
                metrics.record(conn, "big", 1, labels={"blob": BIG})
        assert conn.in_transaction
        audit.record(conn, "after the failures", task_id=kept["id"])
    assert [t["prompt"] for t in tasks.list(conn, status="pending")] == ["first of the block"]
    assert [r["action_type"] for r in audit.list(conn)] == ["after the failures"]
    assert _count(conn, "metrics") == 0


@pytest.mark.parametrize("inner", ["statement", "nested block"])
def test_carrying_on_after_sqlite_rolled_back_the_block_is_refused(conn, inner):
    """Once SQLite has rolled back a block's transaction, the package's writes in that block are refused."""
    _limit_pages(conn, extra=2)
    with pytest.raises(AbathurDBError, match="rolled back before its block ended"):
        with transaction(conn):
            tasks.create(conn, "first of the block")
            try:
                if inner == "statement":
                    _own_sql_insert(conn, "")
                else:
                    with transaction(conn):
                        _own_sql_insert(conn, "")
            except sqlite3.OperationalError:
                pass  # the caller decides to carry on without that row ...
            assert not conn.in_transaction
            _make_room(conn)
            tasks.create(conn, "after the failure")  # ... but the block's transaction is gone
    assert _count(conn, "tasks") == 0 and _count(conn, "metrics") == 0
    assert not conn.in_transaction
    assert tasks.create(conn, "a new block works")["prompt"] == "a new block works"


# ---------------------------------------------------------------------------------------
# Lock waits: BusyError after busy_timeout, or a wait that ends in success.

HOLDER_PROCESS = """
    import sys
    import abathur_db
    from abathur_db import audit

    conn = abathur_db.connect(sys.argv[1])
    conn.execute("BEGIN IMMEDIATE")
    print(audit.record(conn, "holder")["id"], flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    print("released", flush=True)
    conn.close()
"""


class _Holder:
    """Another thread or process holding the write lock (one uncommitted audit row) until released."""

    def __init__(self, kind: str, pool, db_path) -> None:
        self.kind = kind
        if kind == "process":
            self._process = _python(HOLDER_PROCESS, str(db_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.row_id = int(self._process.stdout.readline())
        else:
            self._release = threading.Event()
            holding = concurrent.futures.Future()

            def hold():
                conn = pool.connection()
                with transaction(conn):
                    holding.set_result(audit.record(conn, "holder")["id"])
                    assert self._release.wait(TIMEOUT)

            self._thread = threading.Thread(target=hold)
            self._thread.start()
            self.row_id = holding.result(timeout=TIMEOUT)

    def release(self) -> None:
        if self.kind == "process":
            self._process.stdin.write("\n")
            self._process.stdin.close()
            assert self._process.stdout.readline() == "released\n"
            self._process.stdout.close()
            assert self._process.wait(timeout=TIMEOUT) == 0
        else:
            self._release.set()
            self._thread.join(timeout=TIMEOUT)


@pytest.mark.slow
@pytest.mark.parametrize("holder_kind", ["thread", "process"])
def test_writer_gets_busy_error_after_about_busy_timeout(pool, db_path, holder_kind):
    """A write lock held past busy_timeout gives the writer BusyError after about that long, not a hang."""
    conn = pool.connection()
    timeout_ms = 250
    conn.execute(f"PRAGMA busy_timeout = {timeout_ms}").fetchall()  # this connection only, to keep the test short
    holder = _Holder(holder_kind, pool, db_path)
    try:
        for write in (lambda: audit.record(conn, "waiter"), lambda: tasks.create(conn, "waiter"),
                      lambda: tasks.claim_next(conn)):
            started = time.monotonic()
            with pytest.raises(BusyError, match="locked"):
                write()
            waited = time.monotonic() - started
            assert 0.8 * timeout_ms / 1000 <= waited <= 5 * timeout_ms / 1000, waited
            assert not conn.in_transaction
    finally:
        holder.release()
    assert [r["action_type"] for r in audit.list(conn)] == ["holder"]
    assert audit.record(conn, "after the release")["id"] > holder.row_id


@pytest.mark.parametrize("holder_kind", ["thread", "process"])
def test_writer_waits_for_a_lock_released_within_busy_timeout(pool, db_path, holder_kind):
    """A writer that meets a held lock waits, and succeeds once the lock is released within busy_timeout."""
    holder = _Holder(holder_kind, pool, db_path)
    started = threading.Event()

    def write():
        conn = pool.connection()  # busy_timeout 5000, as configured
        started.set()
        return audit.record(conn, "waiter")

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        try:
            future = executor.submit(write)
            assert started.wait(TIMEOUT)
            # Let it wait a moment: on the in-process write lock when the holder is a
            # thread of this process, in SQLite's busy handler when it is another process.
            threading.Event().wait(0.2)
            assert not future.done()
        finally:
            holder.release()
        written = future.result(timeout=TIMEOUT)
    assert written["id"] > holder.row_id  # it went in after the holder's commit
    conn = pool.connection()
    assert [r["action_type"] for r in audit.list(conn)] == ["waiter", "holder"]


# ---------------------------------------------------------------------------------------
# Fork.


def _exit_status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _write_everything(conn, tag: str) -> None:
    """Write one row to each table through the package, in one transaction."""
    with transaction(conn):
        session = sessions.create(conn, "app", tag)
        task = tasks.create(conn, tag, session_id=session["id"])
        agent = agents.spawn(conn, task["id"], tag, "s", "m", session_id=session["id"])
        audit.record(conn, tag, task_id=task["id"], agent_id=agent["id"])
        checkpoints.save(conn, task["id"], 0, {"by": tag})
        state.set(conn, task["id"], "by", tag)
        metrics.record(conn, tag, 1)


@needs_fork
def test_forked_child_writes_through_the_pool_and_the_parent_carries_on(pool, db_path):
    """Rows written by the parent before and after, and by a forked child, are all kept; the parent's files stay."""
    conn = pool.connection()
    _write_everything(conn, "parent before")
    pid = fork_child(lambda: _write_everything(pool.connection(), "child"))
    assert _exit_status(pid) == 0
    for suffix in ("-wal", "-shm"):
        assert os.path.exists(f"{db_path}{suffix}"), suffix  # the child ran no last-connection cleanup
    assert tasks.list(conn, status="pending")  # the parent's connection still works
    _write_everything(conn, "parent after")
    assert abathur_db.integrity_check(conn) == []
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    for table, column in (("sessions", "user_id"), ("tasks", "prompt"), ("agents", "name"),
                          ("audit", "action_type"), ("metrics", "metric_name")):
        assert [v for (v,) in conn.execute(f"SELECT {column} FROM {table} ORDER BY rowid")] == [
            "parent before", "child", "parent after"], table
    assert _count(conn, "checkpoints") == _count(conn, "state") == 3


@needs_fork
def test_forked_child_keeps_writing_after_the_parent_closes_its_pool(pool, db_path):
    """A child's commits survive the parent closing its last connection while the child still writes.

    While the child kept copies of the parent's connections open, SQLite in the child
    took none of the file locks for its own connection, so the parent's last close
    deleted the WAL under it and the child's later commits were lost.
    """
    metrics.record(pool.connection(), "parent", 0)
    to_parent, from_child = os.pipe()
    to_child, from_parent = os.pipe()

    def child_work():
        conn = pool.connection()
        metrics.record(conn, "child", 1)
        os.write(from_child, b"1")
        assert os.read(to_child, 1) == b"1"  # the parent has closed its pool
        metrics.record(conn, "child", 2)

    pid = fork_child(child_work)
    try:
        assert os.read(to_parent, 1) == b"1"
        pool.close()
        os.write(from_parent, b"1")
        assert _exit_status(pid) == 0
    finally:
        for fd in (to_parent, from_child, to_child, from_parent):
            os.close(fd)
    with abathur_db.open(db_path) as reopened:
        conn = reopened.connection()
        assert [(r["metric_name"], r["metric_value"]) for r in metrics.query(conn)] == [
            ("parent", 0.0), ("child", 1.0), ("child", 2.0)]
        assert abathur_db.integrity_check(conn) == []


@needs_fork
def test_fork_while_another_thread_is_writing_leaves_its_transaction_alone(pool, monkeypatch):
    """A child forked during another thread's large write transaction, which outlasts the fork's wait for it, does
    not undo it in shared memory.

    The child's copy of that thread's connection is kept open, not closed: closing it
    would roll back, in the WAL index both processes share, frames the parent is
    still writing (the parent then read "database disk image is malformed").
    """
    monkeypatch.setattr(pool_module, "BUSY_TIMEOUT_SECONDS", 0.2)  # how long the fork waits for the transaction
    conn = pool.connection()
    spilled, go_on = threading.Event(), threading.Event()

    def writer():
        own = pool.connection()
        with transaction(own):
            for i in range(400):  # some 4 MB: more than the page cache holds, so pages go to the WAL
                tasks.create(own, f"bulk {i}", input_data={"pad": "y" * 10_000})
            spilled.set()
            assert go_on.wait(TIMEOUT)
            tasks.create(own, "last of the bulk")

    def in_child() -> None:
        assert [copy.in_transaction for copy in pool_module._KEPT] == [True]  # the writer's, kept
        pool.connection().execute("SELECT count(*) FROM tasks").fetchall()

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        future = executor.submit(writer)
        try:
            assert spilled.wait(TIMEOUT)
            pid = fork_child(in_child)
            assert _exit_status(pid) == 0
        finally:
            go_on.set()
        future.result(timeout=TIMEOUT)
    assert _count(conn, "tasks") == 401
    padding = conn.execute("SELECT sum(length(input_data ->> '$.pad')) FROM tasks").fetchone()[0]
    assert padding == 4_000_000
    assert abathur_db.integrity_check(conn) == []


# ---------------------------------------------------------------------------------------
# Thread churn.


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_500_short_lived_threads_leave_connections_and_descriptors_bounded(db_path):
    """500 threads that each write and read through the pool, then end, leave no connection or descriptor behind."""
    gc.collect()
    baseline = _open_fds()
    pool = abathur_db.open(db_path)
    main = pool.connection()
    live, release = 3, threading.Event()
    opened = threading.Barrier(live + 1)

    def long_lived():
        pool.connection().execute("SELECT 1").fetchall()
        opened.wait(TIMEOUT)
        release.wait(TIMEOUT)

    keepers = [threading.Thread(target=long_lived) for _ in range(live)]
    for thread in keepers:
        thread.start()
    opened.wait(TIMEOUT)

    def short_lived(n: int) -> None:
        conn = pool.connection()
        metrics.record(conn, "churn", n)
        assert metrics.query(conn, name="churn", limit=1)

    wave, after_wave = 25, []
    try:
        for start in range(0, 500, wave):
            threads = [threading.Thread(target=short_lived, args=(n,)) for n in range(start, start + wave)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=TIMEOUT)
            gc.collect()
            assert pool.open_connections == 1 + live  # the ended threads' connections are closed
            after_wave.append(_open_fds())
    finally:
        release.set()
        for thread in keepers:
            thread.join(timeout=TIMEOUT)
    assert _count(main, "metrics") == 500
    # Each open connection holds its database and WAL files (plus one shared-memory file
    # and one lock file, see _turn, per process). SQLite keeps the descriptor of a connection
    # closed while others hold locks, and reuses it: the count is bounded by the connections
    # alive at once, not by how many threads came and went. One more connection, of the
    # thread that checkpoints in the background (see _checkpointer), is open while writes go on.
    bound = baseline + 2 + 2 * (1 + live + 1) + wave
    assert max(after_wave) <= bound, (baseline, after_wave)
    pool.close()
    gc.collect()
    assert pool.open_connections == 0
    assert _open_fds() == baseline


# ---------------------------------------------------------------------------------------
# WAL growth under a long reader, and the checkpoint helper.

JOURNAL_SIZE_LIMIT = dict(PRAGMAS)["journal_size_limit"]


@pytest.mark.slow
def test_wal_grows_under_a_long_reader_and_shrinks_once_it_ends(pool, db_path):
    """A long read transaction lets the WAL grow; after it ends the WAL is cut back, and checkpoint() empties it."""
    conn = pool.connection()
    task = tasks.create(conn, "audited")
    reader = abathur_db.connect(db_path)
    try:
        reader.execute("BEGIN")
        seen = _count(reader, "audit")  # the reader's snapshot starts here

        def write(n: int) -> int:
            own = pool.connection()
            for i in range(n):
                audit.record(own, "step", task_id=task["id"], action_data={"pad": "z" * 2000, "i": i})
            return n

        with concurrent.futures.ThreadPoolExecutor(2) as executor:
            written = sum(f.result(timeout=TIMEOUT) for f in [executor.submit(write, 600) for _ in range(2)])
        grown = _wal_size(db_path)
        # wal_autocheckpoint keeps the WAL near 1000 pages (~4 MiB), but cannot start it
        # over while the reader's snapshot needs its frames.
        assert grown > JOURNAL_SIZE_LIMIT, grown
        assert _count(reader, "audit") == seen  # the snapshot held
        conn.execute("PRAGMA busy_timeout = 100").fetchall()  # this connection only: the waits below are short
        blocked = abathur_db.checkpoint(conn, "TRUNCATE")
        assert blocked.busy == 1 and blocked.checkpointed < blocked.log, blocked
        assert _wal_size(db_path) >= grown
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert _count(conn, "audit") == written
    # With the reader gone the next checkpoint completes; the write after it starts the
    # WAL over and cuts the file back to journal_size_limit.
    sizes = []
    for i in range(20):
        audit.record(conn, "after the reader", task_id=task["id"])
        sizes.append(_wal_size(db_path))
        if sizes[-1] <= JOURNAL_SIZE_LIMIT:
            break
    assert sizes[-1] <= JOURNAL_SIZE_LIMIT, (grown, sizes)
    done = abathur_db.checkpoint(conn)  # TRUNCATE
    assert done.busy == 0 and done.log == done.checkpointed, done
    assert _wal_size(db_path) == 0, (grown, sizes)
    assert _count(conn, "audit") == written + len(sizes)
    assert abathur_db.integrity_check(conn) == []


# ---------------------------------------------------------------------------------------
# A signal while BEGIN IMMEDIATE waits for another process's lock.

SIGNAL_CHILD = """
    import json, os, signal, sqlite3, subprocess, sys, threading
    import abathur_db
    from abathur_db import metrics, transaction

    path, signame, holder_code, where = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    holder = subprocess.Popen([sys.executable, "-c", holder_code, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()  # the other process holds the write lock now


    class Alarm(Exception):
        pass


    def on_alarm(signum, frame):
        raise Alarm()


    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with SIGINT ignored
    # The C-level handler writes here the moment the signal arrives, even while BEGIN waits.
    arrived, wakeup = os.pipe()
    os.set_blocking(wakeup, False)
    signal.set_wakeup_fd(wakeup)
    pool = abathur_db.open(path)
    conn = pool.connection()
    # A process past its first moments on the file, no other writer seen, waits in SQLite's handler.
    conn.write_lock.busy_until = 0.0 if where == "handler" else float("inf")
    begun = threading.Event()
    conn.set_trace_callback(lambda sql: begun.set() if sql == "BEGIN IMMEDIATE" else None)


    def signal_then_release():
        begun.wait(60)
        signal.pthread_kill(threading.main_thread().ident, getattr(signal, signame))
        os.read(arrived, 1)  # delivered while BEGIN still waits: the holder still holds the lock
        holder.stdin.write("\\n")
        holder.stdin.flush()  # now BEGIN gets the lock, and the handler raises after it returns


    helper = threading.Thread(target=signal_then_release)
    helper.start()
    try:
        with transaction(conn):
            metrics.record(conn, "inside the block", 1)
        raised = None
    except (Alarm, KeyboardInterrupt) as exc:
        raised = type(exc).__name__
    helper.join(60)
    holder.wait(60)
    conn.set_trace_callback(None)
    report = {"raised": raised, "in_transaction": conn.in_transaction}
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # fails at once if the interrupted connection kept the lock
        other.execute("ROLLBACK")
        report["others_can_write"] = True
    except sqlite3.OperationalError as exc:
        report["others_can_write"] = str(exc)
    metrics.record(conn, "afterwards", 1)
    report["committed"] = [n for (n,) in other.execute("SELECT metric_name FROM metrics ORDER BY id")]
    print(json.dumps(report))
"""


@pytest.mark.parametrize("where", ["handler", "steps"])
@pytest.mark.parametrize("signame, raised", [("SIGALRM", "Alarm"), ("SIGINT", "KeyboardInterrupt")])
def test_a_signal_during_the_lock_wait_leaves_no_transaction_open(db_path, signame, raised, where):
    """A signal handler's exception while BEGIN IMMEDIATE waits for another process (in SQLite's busy handler,
    or retrying in steps) rolls back what BEGIN got."""
    abathur_db.open(db_path).close()
    child = _python(SIGNAL_CHILD, str(db_path), signame, textwrap.dedent(HOLDER_PROCESS), where,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 0, err
    assert json.loads(out) == {"raised": raised, "in_transaction": False, "others_can_write": True,
                               "committed": ["afterwards"]}


# ---------------------------------------------------------------------------------------
# pool.close() while threads are inside calls.

CLOSE_UNDER_CALLS = """
    import sqlite3, sys, threading
    import abathur_db
    from abathur_db import AbathurDBError, ConfigurationError, audit, tasks, transaction

    path, rounds = sys.argv[1], int(sys.argv[2])
    unexpected = []
    for _ in range(rounds):
        pool = abathur_db.open(path)
        started = threading.Barrier(5)

        def work():
            conn = pool.connection()
            started.wait(60)
            try:
                while True:
                    with transaction(conn):  # both rows or neither
                        task = tasks.create(conn, "x", input_data={"pad": "p" * 2000})
                        audit.record(conn, "created", task_id=task["id"])
                    tasks.list(conn, status="pending", limit=50)
                    tasks.claim_next(conn)
            except ConfigurationError:
                pass  # closed: what every call after close() raises
            except BaseException as exc:
                unexpected.append(repr(exc))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        started.wait(60)
        pool.close()
        for thread in threads:
            thread.join(60)
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        halves = conn.execute(
            "SELECT count(*) FROM tasks WHERE NOT EXISTS (SELECT 1 FROM audit WHERE task_id = tasks.id)").fetchone()[0]
        print(len(unexpected), halves, abathur_db.integrity_check(conn), unexpected[:3])
"""


def test_close_while_threads_are_inside_calls_never_crashes(db_path):
    """pool.close() with four threads mid-call, 30 times: no crash, no half transaction, only ConfigurationError."""
    child = _python(CLOSE_UNDER_CALLS, str(db_path), "30", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 0, f"exit {child.returncode} (-11 is SIGSEGV): {err[-2000:]}"
    assert out.split(maxsplit=3)[:3] == ["0", "0", "[]"], out


# ---------------------------------------------------------------------------------------
# Fork inside the forking thread's own transaction.

FORK_IN_BLOCK = """
    import json, os, sys
    import abathur_db
    from abathur_db import ConfigurationError, metrics, tasks, transaction

    path, how = sys.argv[1], sys.argv[2]
    pool = abathur_db.open(path)
    conn = pool.connection()
    with transaction(conn):
        for i in range(400):  # some 4 MB: more than the page cache holds, so pages spill to the WAL
            tasks.create(conn, f"bulk {i}", input_data={"pad": "y" * 10_000})
        pid = os.fork()
        if pid == 0:
            if how == "exit":
                sys.exit(0)
            if how == "raise":
                raise RuntimeError("the child gives up")
            if how == "write":
                try:
                    metrics.record(conn, "from the child", 1)
                except ConfigurationError as exc:
                    sys.exit(0 if "os.fork" in str(exc) else 3)
                sys.exit(4)
            if how == "leave":
                pass  # leaves the block normally: it cannot commit what the parent began
    if pid == 0:
        sys.exit(5)  # never reached: leaving the block raised
        # (the child's normal interpreter exit, with the inherited copy still open, follows)
    child_status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    tasks.create(conn, "after the child")
    print(json.dumps({"child": child_status, "tasks": conn.execute("SELECT count(*) FROM tasks").fetchone()[0],
                      "problems": abathur_db.integrity_check(conn)[:3]}))
"""


@needs_fork
@pytest.mark.parametrize("how, status", [("exit", 0), ("raise", 1), ("write", 0), ("leave", 1)])
def test_a_child_forked_inside_a_block_never_ends_the_parents_transaction(db_path, how, status):
    """However a child forked inside a block leaves it, the parent's spilled transaction commits whole and sound."""
    child = _python(FORK_IN_BLOCK, str(db_path), how, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == {"child": status, "tasks": 401, "problems": []}, err
    if how == "leave":
        assert "cannot commit it" in err


# The child ends through the interpreter's normal shutdown without ever leaving the
# parent's block, so every object it inherited, the copy of the connection included,
# is torn down by the interpreter itself.
FORK_THEN_NORMAL_EXIT = """
    import json, os, sqlite3, sys
    import abathur_db
    from abathur_db import tasks, transaction

    path = sys.argv[1]
    pool = abathur_db.open(path)
    conn = pool.connection()
    block = transaction(conn)
    block.__enter__()  # by hand: the child below never runs its exit
    for i in range(400):  # some 4 MB: more than the page cache holds, so pages spill to the WAL
        tasks.create(conn, f"bulk {i}", input_data={"pad": "y" * 10_000})
    spilled = os.path.getsize(path + "-wal")
    pid = os.fork()
    if pid:
        child = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        block.__exit__(None, None, None)
        reader = abathur_db.connect(path)
        try:
            rows = reader.execute("SELECT prompt, input_data ->> '$.pad' FROM tasks ORDER BY rowid").fetchall()
            found = {"rows_intact": rows == [(f"bulk {i}", "y" * 10_000) for i in range(400)],
                     "problems": abathur_db.integrity_check(reader)[:3]}
        except sqlite3.DatabaseError as exc:
            found = {"error": str(exc)}
        print(json.dumps({"child": child, "spilled": spilled > 0, **found}))
"""


@needs_fork
def test_a_child_ending_normally_inside_the_parents_block_leaves_its_transaction_whole(db_path):
    """A child that exits through normal interpreter shutdown, never leaving the parent's block, undoes nothing of it.

    The interpreter's shutdown deallocates what the child inherited; deallocating its
    copy of the connection would close it, and closing rolls back, in the WAL index the
    processes share, the frames the parent spilled (the parent then read "database
    disk image is malformed"). pool._keep_forever holds a reference that is never given back.
    """
    child = _python(FORK_THEN_NORMAL_EXIT, str(db_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == {"child": 0, "spilled": True, "rows_intact": True, "problems": []}, err
