"""Explicit transactions: the exact statements sent, rollback, nesting, and write()."""

from __future__ import annotations

import sqlite3

import pytest

from abathur_db import transaction
from abathur_db.errors import UniqueError, ValidationError
from abathur_db.transaction import write

INSERT = "INSERT INTO metrics (metric_name, metric_value) VALUES ('m', 1)"


@pytest.fixture
def traced(conn):
    """Return the list of statements `conn` sends from now on."""
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    yield sent
    conn.set_trace_callback(None)


def _count(conn) -> int:
    return conn.execute("SELECT count(*) FROM metrics").fetchone()[0]


def test_transaction_sends_begin_immediate_statements_commit(conn, traced):
    """A block sends exactly BEGIN IMMEDIATE, its statements, COMMIT."""
    with transaction(conn):
        conn.execute(INSERT)
        conn.execute(INSERT)
    assert traced == ["BEGIN IMMEDIATE", INSERT, INSERT, "COMMIT"]
    assert _count(conn) == 2


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_any_exception_rolls_back(conn, traced, error):
    """An exception of any kind, KeyboardInterrupt included, rolls the block back."""
    with pytest.raises(error):
        with transaction(conn):
            conn.execute(INSERT)
            raise error()
    assert traced == ["BEGIN IMMEDIATE", INSERT, "ROLLBACK"]
    assert _count(conn) == 0
    assert not conn.in_transaction


def test_nested_block_is_a_savepoint(conn, traced):
    """A block inside an open transaction becomes a SAVEPOINT released on success."""
    with transaction(conn):
        conn.execute(INSERT)
        with transaction(conn):
            conn.execute(INSERT)
    assert traced == [
        "BEGIN IMMEDIATE", INSERT, "SAVEPOINT abathur_db", INSERT, "RELEASE abathur_db", "COMMIT",
    ]
    assert _count(conn) == 2


def test_failed_nested_block_keeps_the_outer_writes(conn):
    """Rolling back an inner block undoes only its own writes."""
    with transaction(conn):
        conn.execute(INSERT)
        with pytest.raises(RuntimeError):
            with transaction(conn):
                conn.execute(INSERT)
                conn.execute(INSERT)
                raise RuntimeError
        assert conn.in_transaction
    assert _count(conn) == 1


def test_outer_rollback_undoes_released_inner_blocks(conn):
    """A released savepoint is still undone when the outer transaction rolls back."""
    with pytest.raises(RuntimeError):
        with transaction(conn):
            with transaction(conn):
                conn.execute(INSERT)
            raise RuntimeError
    assert _count(conn) == 0


def test_write_runs_in_its_own_transaction_and_returns_rows(conn, traced):
    """write() wraps one statement in BEGIN IMMEDIATE … COMMIT and returns RETURNING rows."""
    sql = "INSERT INTO metrics (metric_name, metric_value) VALUES (:metric_name, :metric_value) RETURNING id"
    rows = write(conn, "metrics", sql, {"metric_name": "m", "metric_value": 2})
    assert traced == ["BEGIN IMMEDIATE", sql.replace(":metric_name", "'m'").replace(":metric_value", "2"),
                      "COMMIT"]
    assert rows == [(1,)]


def test_write_failure_rolls_back_and_names_table_field_and_value(conn):
    """A rejected write leaves nothing behind and raises the package error with context."""
    sql = "INSERT INTO metrics (metric_name, metric_value) VALUES (:metric_name, :metric_value)"
    with pytest.raises(ValidationError, match=r"metrics\.metric_value = -1") as info:
        write(conn, "metrics", sql, {"metric_name": "m", "metric_value": -1})
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert _count(conn) == 0
    assert not conn.in_transaction


def test_write_inside_caller_transaction_joins_it(conn):
    """write() inside a caller's transaction commits or rolls back with the caller."""
    sql = "INSERT INTO sessions (id, app_name, user_id) VALUES (:id, 'a', 'u')"
    with pytest.raises(RuntimeError):
        with transaction(conn):
            write(conn, "sessions", sql, {"id": "s1"})
            raise RuntimeError
    assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
    with transaction(conn):
        write(conn, "sessions", sql, {"id": "s1"})
        with pytest.raises(UniqueError, match="sessions.id = 's1'"):
            write(conn, "sessions", sql, {"id": "s1"})
        write(conn, "sessions", sql, {"id": "s2"})
    ids = [i for (i,) in conn.execute("SELECT id FROM sessions ORDER BY id")]
    assert ids == ["s1", "s2"]


def test_begin_that_cannot_get_the_lock_is_a_busy_error(pool, db_path):
    """BEGIN IMMEDIATE against a held write lock raises BusyError once busy_timeout passes."""
    from abathur_db import connect
    from abathur_db.errors import BusyError

    holder = pool.connection()
    waiter = connect(db_path)
    waiter.execute("PRAGMA busy_timeout = 0")
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BusyError):
            with transaction(waiter):
                pass  # pragma: no cover - the block is never entered
        assert not waiter.in_transaction
        assert not waiter.write_lock.locked()  # a failed BEGIN gives the in-process lock back
    finally:
        holder.execute("ROLLBACK")
        waiter.close()


def test_failed_commit_rolls_back_and_raises_the_package_error(conn):
    """A COMMIT refused by a deferred foreign key rolls everything back."""
    from abathur_db.errors import ForeignKeyError

    with pytest.raises(ForeignKeyError):
        with transaction(conn):
            conn.execute("PRAGMA defer_foreign_keys = ON")
            conn.execute("INSERT INTO state (task_id, key, value) VALUES ('no-task', 'k', '1')")
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM state").fetchone()[0] == 0


def test_write_inside_a_transaction_sends_only_its_statement(conn, traced):
    """Inside an open transaction a write is one statement: atomic alone, no savepoint needed."""
    sql = "INSERT INTO metrics (metric_name, metric_value) VALUES (:metric_name, :metric_value)"
    with transaction(conn):
        write(conn, "metrics", sql, {"metric_name": "m", "metric_value": 1})
        with pytest.raises(ValidationError):
            write(conn, "metrics", sql, {"metric_name": "m", "metric_value": -1})
    assert [s.split(" (")[0] for s in traced] == [
        "BEGIN IMMEDIATE", "INSERT INTO metrics", "INSERT INTO metrics", "COMMIT"]
    assert _count(conn) == 1


@pytest.mark.parametrize("carry_on", ["write", "nested block", "leave the block"])
def test_a_block_whose_transaction_ended_early_refuses_to_carry_on(conn, carry_on):
    """Once a block's transaction is gone (SQLite rolled it back), writing on or leaving the block raises."""
    from abathur_db.errors import AbathurDBError

    with pytest.raises(AbathurDBError, match="rolled back before its block ended"):
        with transaction(conn):
            conn.execute(INSERT)
            conn.execute("ROLLBACK")  # what SQLite does by itself after an I/O error
            if carry_on == "write":
                write(conn, "metrics", INSERT, {})
            elif carry_on == "nested block":
                with transaction(conn):
                    conn.execute(INSERT)  # pragma: no cover - the block is never entered
    assert _count(conn) == 0
    assert not conn.in_transaction
    with transaction(conn):  # the connection is usable again
        conn.execute(INSERT)
    assert _count(conn) == 1


def test_package_connections_to_one_file_share_an_in_process_write_lock(pool, db_path, tmp_path):
    """Writers of one file in this process queue on one lock, held by the outermost block only."""
    from abathur_db import connect

    conn = pool.connection()
    other, elsewhere = connect(db_path), connect(tmp_path / "other.db")
    try:
        assert conn.write_lock is other.write_lock is not elsewhere.write_lock
        with transaction(conn):
            assert conn.write_lock.locked()
            with transaction(conn):  # nested: a savepoint, not a second acquire
                conn.execute(INSERT)
        assert not conn.write_lock.locked()
        with pytest.raises(RuntimeError):
            with transaction(conn):
                raise RuntimeError
        assert not conn.write_lock.locked()
    finally:
        other.close()
        elsewhere.close()


def test_a_thread_waiting_for_the_in_process_lock_gets_busy_error(pool, db_path):
    """A writer queued behind another thread's block past its busy_timeout raises BusyError."""
    import threading

    from abathur_db import connect
    from abathur_db.errors import BusyError

    entered, release = threading.Event(), threading.Event()

    def hold():
        with transaction(pool.connection()):  # the holding thread's own connection
            entered.set()
            release.wait(30)

    waiter = connect(db_path)
    waiter.execute("PRAGMA busy_timeout = 50")
    thread = threading.Thread(target=hold)
    try:
        with pytest.raises(BusyError, match="another thread of this process"):
            thread.start()
            assert entered.wait(30)
            with transaction(waiter):
                pass  # pragma: no cover - the block is never entered
    finally:
        release.set()
        thread.join(30)
        waiter.close()
