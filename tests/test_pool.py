"""The per-thread connection pool: configuration, ownership, cleanup, fork."""

from __future__ import annotations

import concurrent.futures
import gc
import os
import sqlite3
import stat
import subprocess
import sys
import threading

import pytest

import abathur_db
from abathur_db import pool as pool_module
from abathur_db.errors import ConfigurationError

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
    # (10) beyond the surviving connection's database, WAL and shared-memory files.
    assert max(after_wave) <= baseline + 3 + 10, after_wave
    pool.close()
    assert _open_fds() == baseline


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
    """A PRAGMA whose read-back differs from the value set fails the connection."""
    monkeypatch.setattr(pool_module, "PRAGMAS", (("foreign_keys", 2),))
    with pytest.raises(ConfigurationError, match="foreign_keys"):
        pool_module.connect(db_path)


def test_unopenable_path_is_a_database_file_error(tmp_path):
    """A path in a missing folder gives the package's file error, not a raw OSError."""
    with pytest.raises(abathur_db.DatabaseFileError, match="cannot create"):
        abathur_db.open(tmp_path / "missing" / "x.db")


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
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which coverage does not follow
        status = 1
        try:
            child_conn = pool.connection()
            child_conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('child', 2)")
            status = 0 if child_conn is not parent_conn else 2
        finally:
            os.write(write_end, bytes([status]))
            os._exit(status)
    os.close(write_end)
    status = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert status == b"\x00"
    parent_conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('parent', 3)")
    names = [n for (n,) in parent_conn.execute("SELECT metric_name FROM metrics ORDER BY id")]
    assert names == ["parent", "child", "parent"]
    assert parent_conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_fork_handler_closes_idle_copies_and_keeps_those_in_a_transaction(db_path, monkeypatch):
    """In a forked child the hook closes inherited idle connections and sets aside, open, one in a transaction."""
    pool = abathur_db.open(db_path)
    idle = pool.connection()
    in_transaction, release = threading.Event(), threading.Event()
    holder = {}

    def writer():
        holder["conn"] = conn = pool.connection()
        conn.execute("BEGIN IMMEDIATE")
        in_transaction.set()
        release.wait(timeout=30)

    thread = threading.Thread(target=writer)
    thread.start()
    kept_before = len(pool_module._INHERITED)
    try:
        assert in_transaction.wait(timeout=30)
        child_pid = os.getpid() + 1
        monkeypatch.setattr(os, "getpid", lambda: child_pid)  # as seen from the child
        pool_module._after_fork_in_child()  # what os.fork() runs in the child, for every pool
        monkeypatch.undo()
        assert pool_module._INHERITED[kept_before:] == [holder["conn"]]
        assert holder["conn"].in_transaction  # not closed, not rolled back
        with pytest.raises(sqlite3.ProgrammingError):
            idle.execute("SELECT 1")
        assert pool.open_connections == 0
        assert pool.connection() is not idle
    finally:
        release.set()
        thread.join(timeout=30)
        del pool_module._INHERITED[kept_before:]
        if "conn" in holder:
            holder["conn"].close()


def test_a_path_sqlite_cannot_open_is_a_database_file_error(tmp_path):
    """connect() on a path SQLite cannot open (a directory) raises DatabaseFileError naming it."""
    with pytest.raises(abathur_db.DatabaseFileError, match="cannot open"):
        pool_module.connect(tmp_path)


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
    child_pid = os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child_pid)  # as seen from the child
    pool_module._after_fork_in_child()
    monkeypatch.undo()
    assert pool.open_connections == 0
    assert pool.connection().execute("SELECT 1").fetchone() == (1,)
