"""The per-thread connection pool: configuration, ownership, cleanup, fork."""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import gc
import inspect
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import types
import time
import weakref
from pathlib import Path

import pytest

import abathur_db
from abathur_db import (_checkpointer, agents, audit, checkpoints, metrics, schema, sessions, state, tasks, transaction,
                        validation)
from abathur_db import pool as pool_module
from abathur_db.errors import ConfigurationError
from helpers import SignalledCondition, fork_and_wait, interrupting, until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(abathur_db.__file__)))

EXPECTED = {
    "journal_mode": "wal",
    "synchronous": 1,
    "foreign_keys": 1,
    "busy_timeout": 5000,
    "wal_autocheckpoint": 1000,
    "journal_size_limit": 16 * 1024 * 1024,
}


def _pragmas(conn: sqlite3.Connection) -> dict:
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in EXPECTED}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_main_thread_connection_has_every_pragma(conn):
    """The opening thread's connection runs with every PRAGMA of SPEC §2 and autocommit."""
    assert _pragmas(conn) == EXPECTED
    assert conn.isolation_level is None


def test_second_thread_connection_has_every_pragma_and_enforces_foreign_keys(pool, conn):
    """A connection created in another thread is configured the same and rejects orphans."""

    def in_thread():
        own = pool.connection()
        try:
            own.execute(
                "INSERT INTO agents (id, name, specialization, task_id, model) "
                "VALUES ('a1', 'n', 's', 'no-such-task', 'm')"
            )
        except sqlite3.IntegrityError as exc:
            refused = str(exc)
        else:  # pragma: no cover - only reached when the test fails
            refused = None
        return own, _pragmas(own), refused

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        other, pragmas, refused = executor.submit(in_thread).result(timeout=30)
    assert other is not conn
    assert pragmas == EXPECTED
    assert refused == "FOREIGN KEY constraint failed"


def test_each_thread_gets_its_own_connection_and_keeps_it(pool):
    """Repeated calls in one thread return one connection; other threads get others."""
    ids = []
    barrier = threading.Barrier(4)

    def in_thread():
        first = pool.connection()
        barrier.wait(timeout=30)  # all four alive at once, so none can inherit another's slot
        assert pool.connection() is first
        return id(first)

    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        ids = [f.result(timeout=30) for f in [executor.submit(in_thread) for _ in range(4)]]
    assert len(set(ids)) == 4


def test_close_closes_connections_opened_by_other_threads(pool):
    """pool.close() closes every connection, including those of threads still running."""
    opened = threading.Event()
    release = threading.Event()
    holder = {}

    def worker():
        holder["conn"] = pool.connection()
        opened.set()
        release.wait(timeout=30)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert opened.wait(timeout=30)
        main = pool.connection()
        assert pool.open_connections == 2
        pool.close()
        assert pool.open_connections == 0
        for conn in (main, holder["conn"]):
            with pytest.raises(sqlite3.ProgrammingError):
                conn.execute("SELECT 1")
    finally:
        release.set()
        thread.join(timeout=30)


def test_closed_pool_refuses_new_connections(pool):
    """After close(), asking for a connection raises a clear error instead of reopening."""
    pool.close()
    with pytest.raises(ConfigurationError, match="closed"):
        pool.connection()


def test_pool_is_a_context_manager(db_path):
    """Leaving a `with abathur_db.open(...)` block closes the pool."""
    with abathur_db.open(db_path) as pool:
        conn = pool.connection()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


def test_a_connection_opened_while_another_closes_raises_nothing(db_path, monkeypatch):
    """connect() in one thread while close() in another reads the registry of connections: neither raises."""
    opened = threading.Event()

    class SlowToRead(weakref.WeakSet):
        """The registry, with the other thread's connect() started in the middle of every reading."""

        def __iter__(self):
            for number, conn in enumerate(super().__iter__()):
                if number == 0 and not opener.is_alive() and not opened.is_set():
                    opener.start()
                    opened.wait(0.2)  # a connect() not kept out of the reading adds to the set meanwhile
                yield conn

    registry = SlowToRead()
    monkeypatch.setattr(pool_module, "_CONNECTIONS", registry)
    first, second = pool_module.connect(db_path), pool_module.connect(db_path)
    result = {}

    def open_one():
        try:
            result["conn"] = pool_module.connect(db_path)
        except BaseException as exc:  # reported below, not lost in the thread
            result["error"] = exc
        opened.set()

    opener = threading.Thread(target=open_one)
    try:
        first.close()  # reads the registry: is it the file's last connection?
        opener.join(5)
        assert "error" not in result and result["conn"] in registry
    finally:
        for conn in (second, result.get("conn")):
            if conn is not None:
                conn.close()


@pytest.mark.slow
def test_short_lived_threads_leave_no_file_descriptors(db_path):
    """100 threads that each use the pool and end leave no connection or descriptor behind."""
    gc.collect()
    baseline = _open_fds()
    pool = abathur_db.open(db_path)
    pool.connection()

    def use():
        pool.connection().execute("SELECT count(*) FROM tasks").fetchall()

    after_wave = []
    for _ in range(10):
        threads = [threading.Thread(target=use) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        gc.collect()
        after_wave.append(_open_fds())
    assert pool.open_connections == 1
    # SQLite keeps the descriptor of a connection closed while another connection of
    # the process holds a lock on the file (closing it would drop that lock), and
    # reuses it for the next open: the count stays within one per concurrent thread
    # (10) beyond the surviving connection's database, WAL and shared-memory files and
    # the process's lock file (see _turn), open from its first write.
    assert max(after_wave) <= baseline + 4 + 10, after_wave
    pool.close()
    assert _open_fds() == baseline


@pytest.mark.parametrize("opener", [abathur_db.open, abathur_db.connect], ids=["open", "connect"])
@pytest.mark.parametrize("path, problem", [(None, "must be a str, bytes or os.PathLike"), (5, "must be a str"),
                                           ("a\x00b.db", "cannot hold a NUL character"),
                                           (b"a\x00b.db", "cannot hold a NUL character")])
def test_a_path_of_another_type_or_holding_nul_is_refused(tmp_path, monkeypatch, opener, path, problem):
    """A database path must be text, bytes or os.PathLike without a NUL character: anything else is refused with
    ConfigurationError naming it, and no file is created."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=f"a database path {problem}"):
        opener(path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path", [":memory:", "", "file::memory:?cache=shared"])
def test_in_memory_database_is_refused(path):
    """An in-memory database cannot be shared per thread, so it is refused by name."""
    with pytest.raises(ConfigurationError, match="in-memory"):
        abathur_db.open(path)


def test_new_database_files_are_private(pool, db_path):
    """The database and its WAL and shared-memory files are readable by their owner only."""
    pool.connection().execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('m', 1)")
    for suffix in ("", "-wal", "-shm"):
        mode = stat.S_IMODE(os.stat(f"{db_path}{suffix}").st_mode)
        assert mode & 0o077 == 0, (suffix, oct(mode))


def test_pragma_read_back_mismatch_is_an_error(db_path, monkeypatch):
    """A PRAGMA whose read-back differs from the value set fails the connection, which is closed."""
    opened = []
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        opened.append(real_connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(pool_module, "PRAGMAS", (("foreign_keys", 2),))
    monkeypatch.setattr(pool_module.sqlite3, "connect", connect)
    with pytest.raises(ConfigurationError, match="foreign_keys"):
        pool_module.connect(db_path)
    (refused,) = opened
    with pytest.raises(sqlite3.ProgrammingError):  # closed before the error was raised
        refused.execute("SELECT 1")


def test_unopenable_path_is_a_database_file_error(tmp_path):
    """A path in a missing folder gives the package's file error naming the file, not a raw OSError."""
    path = tmp_path / "missing" / "x.db"
    with pytest.raises(abathur_db.DatabaseFileError, match="cannot create") as caught:
        abathur_db.open(path)
    assert str(path) in str(caught.value)


def test_old_sqlite_is_refused_at_import():
    """Importing the package under an SQLite older than 3.35 fails with a clear message."""
    code = (
        "import sqlite3; sqlite3.sqlite_version_info = (3, 34, 1); sqlite3.sqlite_version = '3.34.1'\n"
        "import abathur_db\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(abathur_db.__file__)), timeout=60)
    assert result.returncode != 0
    assert "needs SQLite 3.35 or newer" in result.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_opens_its_own_connection(pool):
    """After fork the child gets a new connection and the parent's keeps working."""
    parent_conn = pool.connection()
    parent_conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('parent', 1)")

    def in_child() -> None:
        child_conn = pool.connection()
        child_conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('child', 2)")
        assert child_conn is not parent_conn

    assert fork_and_wait(in_child) == 0
    parent_conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('parent', 3)")
    names = [n for (n,) in parent_conn.execute("SELECT metric_name FROM metrics ORDER BY id")]
    assert names == ["parent", "child", "parent"]
    assert parent_conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _fork_beside(inside_a_block: threading.Event, in_child) -> tuple[threading.Thread, list[int]]:
    """Fork in a thread of its own, once another thread is inside its block; return the thread and the exit code."""
    assert inside_a_block.wait(30)
    codes: list[int] = []
    forker = threading.Thread(target=lambda: codes.append(fork_and_wait(in_child)))
    forker.start()
    forker.join(0.2)
    return forker, codes


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_waits_for_another_threads_write_transaction_and_the_child_writes(pool, db_path):
    """os.fork() waits for the write transaction another thread has open, so the child inherits no copy inside one
    and can write the file; the parent's transaction commits whole."""
    inside, finish, forked = threading.Event(), threading.Event(), threading.Event()

    def writer() -> None:
        conn = pool.connection()
        with transaction(conn):
            metrics.record(conn, "parent", 1)
            inside.set()
            assert finish.wait(30)
            metrics.record(conn, "parent", 2)
        assert forked.wait(30)  # a thread ending closes its connection: not while the process forks

    def in_child() -> None:
        pool_module.BUSY_TIMEOUT_SECONDS = 0.5  # a kept copy inside a transaction would block the write for good
        with contextlib.closing(abathur_db.connect(db_path)) as conn:
            metrics.record(conn, "child", 3)

    lock = pool_module._write_lock(str(db_path))
    thread = threading.Thread(target=writer)
    thread.start()
    forker, codes = _fork_beside(inside, in_child)
    later = threading.Thread(target=lambda: metrics.record(pool.connection(), "queued behind the fork", 4))
    try:
        assert forker.is_alive() and not codes  # waiting for the writer's transaction
        assert until(lambda: lock.waiting == 1)
        later.start()
        assert until(lambda: lock.waiting == 2)
    finally:
        finish.set()
    forker.join(30)
    forked.set()
    for waited in (thread, later):
        waited.join(30)
    assert codes == [0]
    names = [name for (name,) in pool.connection().execute("SELECT metric_name FROM metrics ORDER BY id")]
    assert names[:2] == ["parent", "parent"] and sorted(names[2:]) == ["child", "queued behind the fork"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_that_got_the_process_s_turn_with_the_write_lock_gives_both_back(pool, db_path):
    """A writer ending its block while the fork waits hands it the turn with the lock (as to any waiting thread);
    after the fork the parent gives both back, so other processes are not kept waiting for a turn nobody uses."""
    lock = pool_module._write_lock(str(db_path))
    inside, finish, forked = threading.Event(), threading.Event(), threading.Event()

    def writer() -> None:
        conn = pool.connection()
        with transaction(conn):
            assert lock.turn.take(0) is True
            inside.set()
            assert finish.wait(30)
        assert forked.wait(30)  # a thread ending closes its connection: not while the process forks

    thread = threading.Thread(target=writer)
    thread.start()
    forker, codes = _fork_beside(inside, lambda: None)
    finish.set()
    forker.join(30)
    forked.set()
    thread.join(30)
    assert codes == [0]
    assert lock.turn.since == 0.0 and lock.holder is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_waits_for_a_read_another_thread_has_inside_sqlite_and_the_child_closes_its_copy(pool):
    """os.fork() waits for a statement the package runs outside a block (the fork would otherwise fall inside SQLite),
    and holds new connections back meanwhile; the child then finds that connection idle and closes its copy."""
    inside, finish, forked = threading.Event(), threading.Event(), threading.Event()
    reader: list[sqlite3.Connection] = []

    def stall() -> int:
        inside.set()
        assert finish.wait(30)
        return 0

    def read() -> None:
        conn = pool.connection()
        reader.append(conn)
        conn.set_progress_handler(stall, 1)  # called by SQLite as it runs the statement
        try:
            assert tasks.counts(conn)["pending"] == 0
        finally:
            conn.set_progress_handler(None, 1)
        assert forked.wait(30)  # a thread ending closes its connection: not while the process forks

    def in_child() -> None:
        assert reader[0] not in pool_module._KEPT
        with pytest.raises(sqlite3.ProgrammingError):
            reader[0].execute("SELECT 1")

    opened: list[sqlite3.Connection] = []
    connector = threading.Thread(target=lambda: opened.append(abathur_db.connect(pool.path)))
    thread = threading.Thread(target=read)
    thread.start()
    forker, codes = _fork_beside(inside, in_child)
    try:
        assert forker.is_alive() and not codes  # waiting for the read
        connector.start()
        connector.join(0.2)
        assert connector.is_alive() and not opened  # held back until the fork is done
    finally:
        finish.set()
    forker.join(30)
    forked.set()
    for waited in (thread, connector):
        waited.join(30)
    assert codes == [0] and len(opened) == 1
    opened[0].close()
    assert reader[0].guard.acquire(blocking=False)  # given back in the parent
    reader[0].guard.release()


# What another thread may be inside as it opens: the step to slow down, and the call that runs it.
OPENING = {
    "connect": (pool_module, "_configure", abathur_db.connect),  # inside SQLite as it opens and configures
    "open": (schema, "status", abathur_db.open),  # the package's own statements, reading the schema ledger
}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("opening", OPENING.values(), ids=OPENING.keys())
def test_a_fork_waits_for_a_connection_or_a_pool_another_thread_is_opening(db_path, monkeypatch, opening):
    """os.fork() waits for a connect() or an abathur_db.open() under way in another thread."""
    module, step, open_ = opening
    abathur_db.open(db_path).close()
    inside, finish, forked = threading.Event(), threading.Event(), threading.Event()
    original = getattr(module, step)

    def slow(*args):
        found = original(*args)
        inside.set()
        assert finish.wait(30)
        return found

    monkeypatch.setattr(module, step, slow)
    opened: list = []

    def opener() -> None:
        opened.append(open_(db_path))
        assert forked.wait(30)
        opened[0].close()

    thread = threading.Thread(target=opener)
    thread.start()
    forker, codes = _fork_beside(inside, lambda: None)
    try:
        assert forker.is_alive() and not codes  # waiting for the opening
    finally:
        finish.set()
    forker.join(30)
    forked.set()
    thread.join(30)
    assert codes == [0] and len(opened) == 1


def test_a_connect_held_back_by_a_fork_raises_a_signal_handlers_exception_and_counts_for_nothing(monkeypatch):
    """A connect() held back by a fork waits on a lock, not on a Condition a signal could leave unlocked (see
    SignalledCondition): the handler's exception surfaces; once the fork is over, calls go through again."""
    with monkeypatch.context() as patched:
        patched.setattr(threading, "Condition", SignalledCondition)
        opening = pool_module._Opening()
    opening.hold(0)
    undo = interrupting(0.1)
    try:
        with pytest.raises(TimeoutError), opening:
            pass
    finally:
        undo()
    assert opening._count == 0
    _held_back_until_released(opening)
    assert opening._count == 0


def _held_back_until_released(opening) -> None:
    """Check that a connect() starting now waits until opening.release(), then goes on."""
    entered = threading.Event()

    def enter() -> None:
        with opening:
            entered.set()

    thread = threading.Thread(target=enter)
    thread.start()
    assert not entered.wait(0.1)  # held back until the fork is over
    opening.release()
    assert entered.wait(30)
    thread.join(30)


def test_forks_of_two_threads_at_once_hold_connect_back_until_one_is_over_and_wait_for_the_same_calls():
    """Two forks holding connect() back at once: a call held back goes on at the first release(), never waits for
    ever; each fork waits for the calls under way, and both wake as the last one ends."""
    opening = pool_module._Opening()
    with opening:
        waits = [threading.Thread(target=opening.hold, args=(30,)) for _ in range(2)]
        for wait in waits:
            wait.start()
        assert until(lambda: len(opening._drained) == 2)
    for wait in waits:
        wait.join(30)
        assert not wait.is_alive()
    _held_back_until_released(opening)  # the first fork's release() lets it go on
    opening.release()  # the other fork's: nothing left to release
    assert opening._count == 0 and opening._fork is None


def test_a_fork_whose_wait_for_a_connect_runs_out_leaves_no_gate_behind():
    """A fork that stops waiting for a connect() under way (its time ran out) is no longer woken as the call ends."""
    opening = pool_module._Opening()
    with opening:
        opening.hold(0.01)
        assert opening._drained == []
    opening.release()
    assert opening._count == 0 and opening._fork is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_goes_ahead_after_busy_timeout_and_the_child_keeps_the_copy_still_in_a_statement(pool, monkeypatch):
    """A statement that outlasts the fork's wait does not hold the fork back for longer; the child keeps that copy."""
    monkeypatch.setattr(pool_module, "BUSY_TIMEOUT_SECONDS", 0.1)
    inside, finish = threading.Event(), threading.Event()
    busy: list[sqlite3.Connection] = []

    def in_a_statement() -> None:
        busy.append(pool.connection())
        with busy[0].guard:  # as the SQL layer holds it around a statement
            inside.set()
            assert finish.wait(30)

    thread = threading.Thread(target=in_a_statement)
    thread.start()
    try:
        assert inside.wait(30)
        assert fork_and_wait(lambda: busy[0] in pool_module._KEPT or sys.exit(1)) == 0
    finally:
        finish.set()
        thread.join(30)


def test_the_forks_waits_share_one_busy_timeout(db_path, monkeypatch):
    """However many statements outlast the fork's wait, it waits BUSY_TIMEOUT_SECONDS in all, not that for each."""
    abathur_db.open(db_path).close()
    clock = [0.0]
    monkeypatch.setattr(pool_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    timeouts: list[float] = []

    class Stuck:
        """The guard of a connection whose statement outlasts any wait."""

        def acquire(self, timeout: float) -> bool:
            timeouts.append(timeout)
            clock[0] += timeout
            return False

    conns = [abathur_db.connect(db_path) for _ in range(3)]
    for conn in conns:
        conn.guard = Stuck()
    try:
        pool_module._before_fork()
    finally:
        pool_module._after_fork_in_parent()
        for conn in conns:
            conn.guard = threading.RLock()
            conn.close()
    assert sorted(timeouts, reverse=True) == [pool_module.BUSY_TIMEOUT_SECONDS, 0.0, 0.0]


def test_the_child_gives_back_the_guards_the_fork_took(db_path, monkeypatch):
    """In the child, the guards the fork held are given back before the copies are closed (idle ones are)."""
    abathur_db.open(db_path).close()
    conn = abathur_db.connect(db_path)
    pool_module._before_fork()
    held, paused = list(pool_module._HELD), list(pool_module._PAUSED)
    try:
        assert conn in pool_module._GUARDED
        _run_the_fork_hook(monkeypatch)
        assert pool_module._GUARDED == [] and conn.closed
        with concurrent.futures.ThreadPoolExecutor(1) as executor:  # free for another thread
            assert executor.submit(lambda: conn.guard.acquire(blocking=False)).result(timeout=30)
    finally:  # this process goes on as the parent: give back the rest of what the fork held
        pool_module._HELD[:], pool_module._PAUSED[:] = held, paused
        pool_module._after_fork_in_parent()


def test_a_fork_interrupted_as_it_is_handed_a_write_lock_gives_the_lock_back(pool, db_path, monkeypatch):
    """An exception (a signal handler's) arriving as the fork's wait is handed the write lock leaves it recorded, so
    the parent gives it back after the fork rather than keep every writer of the process out."""
    lock = pool_module._write_lock(str(db_path))
    other = types.SimpleNamespace(thread=-1)  # a connection of another thread, in its block

    def handed_then_interrupted(lock, hold, timeout):
        lock[0] = hold
        raise KeyboardInterrupt

    monkeypatch.setattr(pool_module._WriteLock, "wait", handed_then_interrupted)
    lock[0] = other
    with pytest.raises(KeyboardInterrupt):
        pool_module._before_fork()
    pool_module._after_fork_in_parent()
    assert lock.holder is None
    metrics.record(pool.connection(), "m", 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_inside_the_forking_threads_own_block_does_not_wait_for_it(pool, monkeypatch):
    """The fork waits for other threads' write transactions only: never for the one its own thread has open."""
    waits: list[object] = []
    monkeypatch.setattr(pool_module._WriteLock, "wait", lambda lock, conn, timeout: waits.append(conn) or False)
    conn = pool.connection()
    with transaction(conn):
        metrics.record(conn, "parent", 1)
        assert fork_and_wait(lambda: None) == 0
    assert waits == [] and conn.write_lock.holder is None
    assert [name for (name,) in conn.execute("SELECT metric_name FROM metrics")] == ["parent"]


def _run_the_fork_hook(monkeypatch) -> None:
    """Run what os.fork() runs in the child, for every pool and connection, as the child would see it."""
    child_pid = os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child_pid)
    pool_module._after_fork_in_child()
    monkeypatch.undo()


@pytest.mark.parametrize("busy", ["in a transaction", "inside a statement"])
def test_fork_handler_closes_idle_copies_and_keeps_busy_ones(db_path, monkeypatch, busy):
    """In a forked child the hook closes inherited idle copies and keeps, open and disowned, one caught busy."""
    pool = abathur_db.open(db_path)
    idle = pool.connection()
    started, release = threading.Event(), threading.Event()
    holder = {}

    def worker():
        holder["conn"] = conn = pool.connection()
        if busy == "in a transaction":
            conn.execute("BEGIN IMMEDIATE")
        # Inside a statement, the SQL layer holds the connection's guard.
        with conn.guard if busy == "inside a statement" else contextlib.nullcontext():
            started.set()
            release.wait(timeout=30)

    thread = threading.Thread(target=worker)
    thread.start()
    kept_before = len(pool_module._KEPT)
    try:
        assert started.wait(timeout=30)
        _run_the_fork_hook(monkeypatch)
        assert pool_module._KEPT[kept_before:] == [holder["conn"]]
        assert holder["conn"].owner is None
        assert holder["conn"].in_transaction == (busy == "in a transaction")  # not closed, not rolled back
        with pytest.raises(sqlite3.ProgrammingError):
            idle.execute("SELECT 1")
        assert pool.open_connections == 0
        assert pool.connection() is not idle
    finally:
        release.set()
        thread.join(timeout=30)
        del pool_module._KEPT[kept_before:]
        if "conn" in holder:
            holder["conn"].close()


def test_a_path_sqlite_cannot_open_is_a_database_file_error(tmp_path):
    """connect() on a path SQLite cannot open (a directory) raises DatabaseFileError naming it."""
    with pytest.raises(abathur_db.DatabaseFileError, match="cannot open") as caught:
        pool_module.connect(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_pool_repr_names_the_file_and_its_connections(pool, db_path):
    """repr(pool) shows the file and how many connections are open."""
    pool.connection()
    assert repr(pool) == f"<abathur_db.Pool {str(db_path)!r} connections=1>"


class _Clock:
    """Stands in for the time module in pool: sleeping runs `on_sleep` and moves the clock on."""

    def __init__(self, on_sleep):
        self.now, self.sleeps, self._on_sleep = 0.0, [], on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self._on_sleep(self)


@pytest.fixture
def rollback_journal_file(tmp_path):
    """Return the path of a database still in rollback-journal mode, and a connection writing to it."""
    path = tmp_path / "plain.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")  # a RESERVED lock: switching to WAL is refused at once
    yield path, writer
    writer.close()


def test_switch_to_wal_retries_while_another_connection_holds_the_file(rollback_journal_file, monkeypatch):
    """journal_mode=WAL refused with "database is locked" (no busy handler) is retried until it succeeds."""
    path, writer = rollback_journal_file
    clock = _Clock(lambda clock: writer.execute("COMMIT") if writer.in_transaction else None)
    monkeypatch.setattr(pool_module, "time", clock)
    conn = pool_module.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert clock.sleeps == [0.001]
    finally:
        conn.close()


def test_switch_to_wal_gives_up_with_busy_error_after_busy_timeout(rollback_journal_file, monkeypatch):
    """A lock that outlasts busy_timeout during the switch to WAL raises BusyError, backing off up to 50 ms."""
    path, _ = rollback_journal_file
    clock = _Clock(lambda clock: None)
    monkeypatch.setattr(pool_module, "time", clock)
    with pytest.raises(abathur_db.BusyError, match="locked"):
        pool_module.connect(path)
    assert clock.now > pool_module.BUSY_TIMEOUT_SECONDS and max(clock.sleeps) == 0.05


def test_fork_handler_passes_over_a_connection_its_user_closed(db_path, monkeypatch):
    """A pooled connection closed by hand before the fork is skipped, not an error, in the child."""
    pool = abathur_db.open(db_path)
    pool.connection().close()
    _run_the_fork_hook(monkeypatch)
    assert pool.open_connections == 0
    assert pool.connection().execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------------------------------
# A connection belongs to the thread that opened it.

OTHER_THREAD_CALLS = {
    "tasks.create": lambda conn: tasks.create(conn, "intruder"),
    "tasks.claim_next": lambda conn: tasks.claim_next(conn),
    "tasks.claim_next-wait": lambda conn: tasks.claim_next(conn, wait=0.01),
    "audit.prune": lambda conn: audit.prune(conn, older_than=dt.timedelta(0)),
    "metrics.prune": lambda conn: metrics.prune(conn, older_than=dt.timedelta(0)),
    "tasks.get": lambda conn: tasks.get(conn, "mine"),
    "tasks.list": lambda conn: tasks.list(conn, status="pending"),
    "transaction": lambda conn: transaction(conn).__enter__(),
    "checkpoint": lambda conn: abathur_db.checkpoint(conn),
    "integrity_check": lambda conn: abathur_db.integrity_check(conn),
    "validate_foreign_keys": lambda conn: abathur_db.validate_foreign_keys(conn),
    "explain_query_plan": lambda conn: abathur_db.explain_query_plan(conn, "SELECT 1"),
    "rule_violations": lambda conn: validation.rule_violations(conn),
    "check_catalog": lambda conn: abathur_db.check_catalog(conn),
}


@pytest.mark.parametrize("call", OTHER_THREAD_CALLS.values(), ids=OTHER_THREAD_CALLS.keys())
def test_a_connection_used_from_another_thread_is_refused_at_once(pool, call):
    """Another thread's call on a connection raises ConfigurationError naming both threads, and joins nothing."""
    conn = pool.connection()
    with pytest.raises(RuntimeError):
        with transaction(conn):
            tasks.create(conn, "the owner's", task_id="mine")
            tasks.create(conn, "claimable", priority=9)
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="intruder") as executor:
                refused = executor.submit(lambda: pytest.raises(ConfigurationError, call, conn)).result(timeout=30)
            raise RuntimeError("the owner rolls its block back")
    message = str(refused.value)
    assert threading.current_thread().name in message and "intruder" in message, message
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0  # nothing was claimed or kept
    assert not conn.in_transaction


def test_a_second_connection_of_the_same_thread_is_not_blamed_on_another_thread(pool, db_path):
    """A write on a second connection while this thread's first holds a block fails at once, naming this thread."""
    conn = pool.connection()
    other = abathur_db.connect(db_path)
    try:
        with transaction(conn):
            tasks.create(conn, "first")
            with pytest.raises(ConfigurationError, match="this thread") as caught:
                tasks.create(other, "second")
        assert "another thread" not in str(caught.value)
        assert tasks.create(other, "second, after the block")["status"] == "pending"
    finally:
        other.close()


# ---------------------------------------------------------------------------------------
# pool.close() while connections are in use.


def test_close_during_another_threads_block_lets_it_commit_whole_then_closes(pool, db_path):
    """pool.close() during another thread's block: the block commits whole, then its connection closes."""
    entered, closed = threading.Event(), threading.Event()

    def worker():
        conn = pool.connection()
        with transaction(conn):
            tasks.create(conn, "before close", task_id="a")
            entered.set()
            assert closed.wait(30)
            tasks.create(conn, "after close", task_id="b")  # the block may finish
        with pytest.raises(ConfigurationError, match="closed"):
            tasks.get(conn, "a")
        return conn

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        future = executor.submit(worker)
        assert entered.wait(30)
        pool.close()
        closed.set()
        worker_conn = future.result(timeout=30)
    with pytest.raises(sqlite3.ProgrammingError):
        worker_conn.execute("SELECT 1")  # closed as its block ended
    with abathur_db.open(db_path) as reopened:
        assert [t["id"] for t in tasks.list(reopened.connection(), status="pending")] == ["a", "b"]


AFTER_CLOSE = {
    "tasks.get": lambda conn: tasks.get(conn, "t"),
    "tasks.get_with_session": lambda conn: tasks.get_with_session(conn, "t"),
    "tasks.list": lambda conn: tasks.list(conn, status="pending"),
    "tasks.create": lambda conn: tasks.create(conn, "p"),
    "tasks.claim_next": lambda conn: tasks.claim_next(conn),
    "tasks.claim_next-wait": lambda conn: tasks.claim_next(conn, wait=0.01),
    "audit.prune": lambda conn: audit.prune(conn, older_than=dt.timedelta(0)),
    "metrics.prune": lambda conn: metrics.prune(conn, older_than=dt.timedelta(0)),
    "agents.get": lambda conn: agents.get(conn, "a"),
    "agents.list": lambda conn: agents.list(conn, task_id="t"),
    "audit.list": lambda conn: audit.list(conn),
    "checkpoints.load": lambda conn: checkpoints.load(conn, "t"),
    "checkpoints.list": lambda conn: checkpoints.list(conn, task_id="t"),
    "sessions.get": lambda conn: sessions.get(conn, "s"),
    "state.get": lambda conn: state.get(conn, "t", "k"),
    "metrics.query": lambda conn: metrics.query(conn),
    "transaction": lambda conn: transaction(conn).__enter__(),
    "checkpoint": lambda conn: abathur_db.checkpoint(conn),
}


@pytest.mark.parametrize("call", AFTER_CLOSE.values(), ids=AFTER_CLOSE.keys())
def test_every_call_after_close_raises_configuration_error(pool, call):
    """After pool.close() every read and write on a connection of the pool raises ConfigurationError."""
    conn = pool.connection()
    tasks.create(conn, "p", task_id="t")
    pool.close()
    with pytest.raises(ConfigurationError, match="closed"):
        call(conn)


def test_table_modules_send_no_statement_of_their_own():
    """Every table module reads and writes through the SQL layer (one, rows, write): none calls execute itself."""
    for module in (agents, audit, checkpoints, metrics, sessions, state, tasks):
        assert ".execute(" not in inspect.getsource(module), module.__name__


def test_a_damaged_page_is_a_database_file_error_on_read(pool, db_path):
    """A read that meets a damaged page raises DatabaseFileError, not a raw sqlite3 error."""
    conn = pool.connection()
    for i in range(200):
        tasks.create(conn, f"task {i}", task_id=f"t{i:03}", input_data={"pad": "p" * 500})
    abathur_db.checkpoint(conn)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'tasks'").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pool.close()
    with open(db_path, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xa5" * page_size)
    damaged = abathur_db.connect(db_path)
    try:
        for read in (lambda: tasks.get(damaged, "t100"), lambda: tasks.list(damaged, status="pending")):
            with pytest.raises(abathur_db.DatabaseFileError, match="malformed"):
                read()
    finally:
        damaged.close()


# ---------------------------------------------------------------------------------------
# Paths and files.


def test_a_relative_path_is_resolved_when_the_pool_opens(tmp_path, monkeypatch):
    """A thread that opens its connection after os.chdir still writes to the file the pool was opened on."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    pool = abathur_db.open("abathur.db")
    assert pool.path == str(first / "abathur.db")
    monkeypatch.chdir(second)
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(lambda: tasks.create(pool.connection(), "from a thread")).result(timeout=30)
    assert not (second / "abathur.db").exists()
    assert [t["prompt"] for t in tasks.list(pool.connection(), status="pending")] == ["from a thread"]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_connect_creates_owner_only_files_whatever_the_umask(tmp_path, umask):
    """connect() creates the database, its WAL and shared-memory files readable and writable by the owner only."""
    path = tmp_path / "new.db"
    previous = os.umask(umask)
    try:
        conn = abathur_db.connect(path)
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    finally:
        os.umask(previous)
    try:
        for suffix in ("", "-wal", "-shm"):
            assert stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) == 0o600, suffix
    finally:
        conn.close()


def test_a_bytes_path_opens_the_same_file(db_path):
    """A path given as bytes opens the file its text names."""
    with abathur_db.open(os.fsencode(db_path)) as pool:
        assert pool.path == str(db_path)
        tasks.create(pool.connection(), "via bytes")
    with abathur_db.open(db_path) as pool:
        assert [t["prompt"] for t in tasks.list(pool.connection(), status="pending")] == ["via bytes"]


@pytest.mark.parametrize("name", ["mode=memory.db", ":memory:.db", "file.db"])
def test_a_file_whose_name_looks_like_a_memory_uri_is_a_file(tmp_path, name):
    """Only in-memory names are refused: a plain file name is a file, whatever it contains."""
    with abathur_db.open(tmp_path / name) as pool:
        tasks.create(pool.connection(), "kept")
    assert (tmp_path / name).stat().st_size > 0


def test_a_path_of_another_type_is_a_configuration_error():
    """A path that is not text, bytes or os.PathLike raises ConfigurationError naming it, not TypeError."""
    with pytest.raises(ConfigurationError, match="path") as caught:
        abathur_db.open(42)
    assert "42" in str(caught.value)


FULL_DISK_AT_OPEN = """
    import resource, signal, sys
    import abathur_db
    from abathur_db import pool as pool_module

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        pool_module.connect(sys.argv[1], readonly=sys.argv[3] == "readonly")
    except abathur_db.AbathurDBError as exc:
        print(type(exc).__name__, exc)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs resource.RLIMIT_FSIZE")
@pytest.mark.parametrize("mode", ["readwrite", "readonly"])
@pytest.mark.parametrize("limit, error", [(4096, "StorageFullError"), (0, "AbathurDBError")])
def test_a_full_disk_at_open_names_the_file(db_path, mode, limit, error):
    """No room for the shared-memory file at open: StorageFullError (or the error SQLite gives) naming the file."""
    with abathur_db.open(db_path) as pool:
        tasks.create(pool.connection(), "kept")  # the last close then removes -wal and -shm
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(FULL_DISK_AT_OPEN), str(db_path), str(limit), mode],
                            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{error} {db_path}: "), result.stdout


@pytest.fixture
def without_shared_memory(monkeypatch):
    """Open every connection through SQLite's unix-dotfile VFS, which, like some network file systems, has no -shm."""
    real_connect = sqlite3.connect

    def connect(target, *args, uri=False, **kwargs):
        if not uri:
            target = Path(target).absolute().as_uri()
        return real_connect(f"{target}{'&' if '?' in str(target) else '?'}vfs=unix-dotfile", *args, uri=True, **kwargs)

    monkeypatch.setattr(pool_module.sqlite3, "connect", connect)


def test_a_file_system_without_wal_is_explained(without_shared_memory, db_path):
    """Where SQLite cannot use WAL, opening fails with the cause and the opt-in fallback named."""
    with pytest.raises(ConfigurationError, match="cannot use WAL") as caught:
        abathur_db.open(db_path)
    assert str(db_path) in str(caught.value) and "allow_rollback_journal=True" in str(caught.value)


def test_the_rollback_journal_fallback_is_opt_in_and_works(without_shared_memory, db_path):
    """With allow_rollback_journal the database runs on the rollback journal, synchronous=FULL, and works."""
    with abathur_db.open(db_path, allow_rollback_journal=True) as pool:
        conn = pool.connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        task = tasks.create(conn, "on a rollback journal")
        assert tasks.claim_next(conn)["id"] == task["id"]
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            assert executor.submit(lambda: tasks.get(pool.connection(), task["id"])["status"]).result(30) == "running"


def test_a_call_on_a_connection_inherited_through_fork_is_refused(pool, monkeypatch):
    """In a forked child a package call on the parent's connection raises ConfigurationError naming both processes."""
    conn = pool.connection()
    parent, child = os.getpid(), os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child)  # as seen from a forked child
    conn.owner = None  # as its fork handler leaves the parent's connections
    with pytest.raises(ConfigurationError, match=f"opened by process {parent} and inherited through os.fork") as caught:
        tasks.get(conn, "t")
    assert f"process {child} must open its own" in str(caught.value)


# ---------------------------------------------------------------------------------------
# Connections caught inside a transaction when their pool closes or their thread ends.


def _write_lock_is_free(db_path) -> bool:
    """Return whether a connection outside the package gets the file's write lock at once."""
    other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def _closed_not_kept(conn) -> bool:
    """Return whether `conn` is closed, and not parked among the connections a forked child keeps."""
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return all(kept is not conn for kept in pool_module._KEPT)
    return False


@pytest.mark.parametrize("how", ["BEGIN IMMEDIATE of its own", "transaction block never left"])
def test_a_connection_whose_thread_ends_inside_a_transaction_is_closed_and_rolled_back(pool, db_path, how):
    """A thread ending inside a transaction leaves its connection closed (not parked), its writes undone."""
    def worker():
        conn = pool.connection()
        if how == "BEGIN IMMEDIATE of its own":
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('lost', 1)")
        else:
            block = transaction(conn)
            block.__enter__()
            metrics.record(conn, "lost", 1)
        assert conn.in_transaction
        return conn

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        worker_conn = executor.submit(worker).result(timeout=30)
    gc.collect()
    assert _closed_not_kept(worker_conn)
    assert worker_conn.write_lock.holder is None and _write_lock_is_free(db_path)
    assert pool.open_connections == 1  # the test thread's own
    assert metrics.query(pool.connection()) == []


def test_pool_close_closes_a_connection_inside_a_transaction_of_its_own(pool, db_path):
    """pool.close() while another thread's connection is inside its own BEGIN closes it at once, rolled back."""
    began, release = threading.Event(), threading.Event()

    def worker():
        conn = pool.connection()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('lost', 1)")
        began.set()
        release.wait(timeout=30)
        return conn

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        future = executor.submit(worker)
        try:
            assert began.wait(timeout=30)
            pool.close()
            assert _write_lock_is_free(db_path)
        finally:
            release.set()
        worker_conn = future.result(timeout=30)
    assert _closed_not_kept(worker_conn)
    with abathur_db.open(db_path) as reopened:
        assert metrics.query(reopened.connection()) == []


def test_pool_close_during_a_block_closes_the_connection_once_the_block_ends_without_parking_it(pool):
    """A connection whose block outlives pool.close() is closed as the block ends, and never kept open for good."""
    conn = pool.connection()
    with transaction(conn):
        metrics.record(conn, "kept", 1)
        pool.close()
        assert all(kept is not conn for kept in pool_module._KEPT)
        metrics.record(conn, "kept too", 2)
    assert _closed_not_kept(conn)
    with abathur_db.open(pool.path) as reopened:
        assert [m["metric_name"] for m in metrics.query(reopened.connection())] == ["kept", "kept too"]


def test_a_thread_waiting_for_the_in_process_write_lock_is_woken_not_left_to_poll(monkeypatch):
    """Giving the in-process write lock back wakes the thread waiting for it (its gate opens, not its polling cap)."""
    woken: list[bool] = []
    waiting = threading.Event()

    class Gate:
        def __init__(self):
            self._lock = threading.Lock()
            self.locked, self.release = self._lock.locked, self._lock.release

        def acquire(self, blocking=True, timeout=-1):
            if timeout == -1:  # closing the gate as the waiter starts
                return self._lock.acquire()
            waiting.set()
            opened = self._lock.acquire(timeout=30)  # not the lock's short polling cap: only wake() opens it in time
            woken.append(opened)
            return opened

    class Waiter(pool_module._Waiter):
        def __init__(self, conn):
            super().__init__(conn)
            self.gate = Gate()
            self.gate.acquire()

    monkeypatch.setattr(pool_module, "_Waiter", Waiter)
    lock = pool_module._WriteLock("unused.db")
    holder, waiter = object(), object()
    assert lock.setdefault(0, holder) is holder
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        taken = executor.submit(lock.wait, waiter, 30)
        assert waiting.wait(timeout=30) and lock.waiting == 1
        lock.pop(0)
        lock.wake()
        assert taken.result(timeout=30) is True
    assert woken[-1] is True and lock.holder is waiter and lock.waiting == 0


def test_the_write_lock_is_handed_to_a_thread_that_waited_past_the_hand_off_time(monkeypatch):
    """A freed lock goes to the longest waiter once it has waited HANDOFF_SECONDS, before anyone asks for it again."""
    lock = pool_module._WriteLock("unused.db")
    holder, early, late = object(), object(), object()
    lock.wake()  # nobody waits: the free lock stays free
    assert lock.holder is None
    lock.setdefault(0, holder)
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        first = executor.submit(lock.wait, early, 30)
        for _ in range(30_000):  # queue `early` ahead of `late`
            if lock.waiting == 1:
                break
            time.sleep(0.001)
        second = executor.submit(lock.wait, late, 30)
        for _ in range(30_000):
            if lock.waiting == 2:
                break
            time.sleep(0.001)
        time.sleep(pool_module.HANDOFF_SECONDS * 2)
        lock.pop(0)
        lock.wake()
        # Handed over in wake() itself: the holder that gave it back cannot take it again.
        assert lock.holder is early and lock.setdefault(0, holder) is early
        assert first.result(timeout=30) is True
        lock.pop(0)
        monkeypatch.setattr(pool_module, "HANDOFF_SECONDS", 3600)  # now no waiter has waited long enough
        lock.wake()
        assert second.result(timeout=30) is True  # woken, it takes the free lock itself
    assert lock.holder is late and lock.waiting == 0


def _queue(lock, *conns):
    """Start a thread waiting for `lock` for each of `conns`, in that order; return their futures."""
    executor = concurrent.futures.ThreadPoolExecutor(len(conns))
    futures = []
    for conn in conns:
        futures.append(executor.submit(lock.wait, conn, 30))
        for _ in range(30_000):
            if lock.waiting == len(futures):
                break
            time.sleep(0.001)
    executor.shutdown(wait=False)
    return futures


def test_the_write_lock_is_kept_for_the_hand_off_time_by_each_holder_and_a_dozing_waiter_is_left_asleep():
    """The hand-off time counts from when the holder got the lock, and a waiter that found it taken again dozes.

    However long the next waiter has waited, a thread just handed the lock keeps it
    for HANDOFF_SECONDS; meanwhile releases neither hand the lock over nor wake that
    waiter once it has woken to find the lock taken back.
    """
    lock = pool_module._WriteLock("unused.db")
    holder, early, late = object(), object(), object()
    lock.setdefault(0, holder)
    first, second = _queue(lock, early, late)
    time.sleep(pool_module.HANDOFF_SECONDS * 2)
    lock.pop(0)
    lock.wake()
    assert first.result(timeout=30) is True and lock.holder is early
    (sleeper,) = list(lock._queue)
    lock.handed = time.monotonic() + 3600  # as far as the lock can tell, `early` got it just now
    lock.pop(0)
    lock.setdefault(0, early)  # `early`, writing in a loop, takes it back before `late` runs
    lock.wake()
    for _ in range(30_000):  # woken, `late` finds the lock taken and dozes
        if sleeper.dozing and sleeper.gate.locked():
            break
        time.sleep(0.001)
    for _ in range(100):
        lock.pop(0)
        lock.wake()
        assert lock.holder is None and sleeper.dozing and sleeper.gate.locked()  # neither handed nor woken
        lock.setdefault(0, early)
    lock.handed = 0.0  # `early` has had it long enough
    lock.pop(0)
    lock.wake()
    assert lock.holder is late and second.result(timeout=30) is True


# ---------------------------------------------------------------------------------------
# Read-only connections (verify --check-only).


@pytest.mark.parametrize("write", [
    pytest.param(lambda conn: tasks.create(conn, "refused"), id="tasks.create"),
    pytest.param(lambda conn: metrics.record(conn, "refused", 1), id="metrics.record"),
    pytest.param(lambda conn: tasks.claim_next(conn), id="tasks.claim_next"),
])
@pytest.mark.parametrize("pool_open", [True, False], ids=["pool open", "pool closed"])
def test_a_write_through_a_read_only_connection_fails_and_changes_nothing(db_path, write, pool_open):
    """connect(readonly=True) cannot write: the package's writes raise DatabaseFileError, and no row changes."""
    pool = abathur_db.open(db_path)
    tasks.create(pool.connection(), "claimable", task_id="t")
    if not pool_open:
        pool.close()
    reader = abathur_db.connect(db_path, readonly=True)
    try:
        with pytest.raises(abathur_db.DatabaseFileError, match="readonly"):
            write(reader)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("DELETE FROM tasks")
        assert not reader.in_transaction
        assert [(t["id"], t["status"]) for t in tasks.list(reader, status="pending")] == [("t", "pending")]
        assert metrics.query(reader) == []
    finally:
        reader.close()
        pool.close()


def test_a_read_only_connection_has_every_pragma(pool, db_path):
    """connect(readonly=True) reads journal_mode and sets every other PRAGMA, as a writing connection does."""
    reader = abathur_db.connect(db_path, readonly=True)
    try:
        assert _pragmas(reader) == EXPECTED
    finally:
        reader.close()


def test_a_read_only_connection_never_creates_the_file(tmp_path):
    """connect(readonly=True) on a missing file raises DatabaseFileError naming it, and creates nothing."""
    missing = tmp_path / "missing.db"
    with pytest.raises(abathur_db.DatabaseFileError) as caught:
        abathur_db.connect(missing, readonly=True)
    assert str(missing) in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_connect_and_pool_refuse_the_rollback_journal_unless_asked(without_shared_memory, db_path):
    """connect() and Pool() without allow_rollback_journal refuse a file system without WAL, as open() does."""
    for opening in (abathur_db.connect, lambda path: abathur_db.Pool(path).connection()):
        with pytest.raises(ConfigurationError, match="allow_rollback_journal=True"):
            opening(db_path)
    conn = abathur_db.connect(db_path, allow_rollback_journal=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# In-memory names.


@pytest.mark.parametrize("path", ["file:x?mode=memory", "file:x.db?cache=shared&mode=memory", "file::memory:"])
def test_every_form_of_an_in_memory_uri_is_refused(tmp_path, monkeypatch, path):
    """A file: URI asking for memory (mode=memory in its query) is refused by name, and no file appears."""
    monkeypatch.chdir(tmp_path)
    for opening in (abathur_db.open, abathur_db.connect):
        with pytest.raises(ConfigurationError, match="in-memory") as caught:
            opening(path)
        assert repr(path) in str(caught.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["file:notes.db", "file:mode=memory.db"])
def test_a_relative_name_starting_with_file_is_a_file(tmp_path, monkeypatch, name):
    """A plain name that starts with 'file:' but asks for no memory is a file in the working directory."""
    monkeypatch.chdir(tmp_path)
    with abathur_db.open(name) as pool:
        tasks.create(pool.connection(), "kept")
    assert (tmp_path / name).stat().st_size > 0


# ---------------------------------------------------------------------------------------
# The fork handler, as the child runs it.


def test_fork_handler_closes_idle_connections_from_connect_and_keeps_busy_ones(db_path, monkeypatch):
    """In a forked child, copies of connect()'s connections are handled like pooled ones: idle closed, busy kept."""
    abathur_db.open(db_path).close()
    idle, busy = abathur_db.connect(db_path), abathur_db.connect(db_path)
    busy.execute("BEGIN IMMEDIATE")
    kept_before = len(pool_module._KEPT)
    try:
        _run_the_fork_hook(monkeypatch)
        with pytest.raises(sqlite3.ProgrammingError):
            idle.execute("SELECT 1")
        assert pool_module._KEPT[kept_before:] == [busy] and busy.in_transaction
    finally:
        del pool_module._KEPT[kept_before:]
        busy.close()


def test_fork_handler_closes_the_copy_of_the_background_checkpoints_connection(pool, db_path, monkeypatch):
    """The checkpoints' connection, idle at every fork, is closed in the child like the pool's own idle copies."""
    monkeypatch.setattr(_checkpointer, "CHECKPOINT_EVERY", 2)
    checkpointer = pool_module._write_lock(str(db_path)).checkpointer
    for i in range(2):
        metrics.record(pool.connection(), "m", i)
    assert until(lambda: checkpointer.runs == 1 and not checkpointer.running)
    copy = checkpointer.conn
    _run_the_fork_hook(monkeypatch)
    with pytest.raises(sqlite3.ProgrammingError):
        copy.execute("SELECT 1")


def test_fork_handler_gives_the_child_fresh_write_locks(pool, monkeypatch):
    """A write lock a parent's thread held at the fork does not hold back the child's own connections."""
    parent = pool.connection()
    kept_before = len(pool_module._KEPT)
    try:
        with transaction(parent):
            held = parent.write_lock
            _run_the_fork_hook(monkeypatch)
            with concurrent.futures.ThreadPoolExecutor(1) as executor:
                fresh = executor.submit(lambda: pool.connection().write_lock).result(timeout=30)
            assert fresh is not held and fresh.holder is None
            assert held.holder is parent
    finally:
        del pool_module._KEPT[kept_before:]
