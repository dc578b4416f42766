"""Explicit transactions: the exact statements sent, rollback, nesting, and write()."""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import os
import sqlite3
import sys
import threading
import time

import pytest

import abathur_db
from abathur_db import metrics, tasks, transaction
from abathur_db import pool as pool_module
from abathur_db.errors import AbathurDBError, BusyError, ConfigurationError, UniqueError, ValidationError
from abathur_db.transaction import write, write_many
from helpers import tracing, until

INSERT = "INSERT INTO metrics (metric_name, metric_value) VALUES ('m', 1)"


@pytest.fixture
def traced(conn):
    """Return the list of statements `conn` sends from now on."""
    with tracing(conn) as sent:
        yield sent


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


def test_write_many_runs_every_set_in_one_transaction_and_names_the_one_refused(conn, traced):
    """write_many() sends its statement once per parameter set in one transaction; a refusal quotes its own set."""
    sql = "INSERT INTO metrics (metric_name, metric_value) VALUES (:metric_name, :metric_value)"
    write_many(conn, "metrics", sql, [{"metric_name": "a", "metric_value": 1}, {"metric_name": "b", "metric_value": 2}])
    assert traced[0] == "BEGIN IMMEDIATE" and traced[-1] == "COMMIT" and len(traced) == 4
    assert _count(conn) == 2
    with pytest.raises(ValidationError, match=r"metrics\.metric_value = -3") as info:
        write_many(conn, "metrics", sql, [{"metric_name": "c", "metric_value": 3},
                                          {"metric_name": "d", "metric_value": -3},
                                          {"metric_name": "e", "metric_value": -5}])
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert _count(conn) == 2 and not conn.in_transaction  # the whole call undone


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
        assert waiter.write_lock.holder is None  # a failed BEGIN gives the in-process lock back
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
            assert conn.write_lock.holder is conn
            with transaction(conn):  # nested: a savepoint, not a second acquire
                conn.execute(INSERT)
        assert conn.write_lock.holder is None
        with pytest.raises(RuntimeError):
            with transaction(conn):
                raise RuntimeError
        assert conn.write_lock.holder is None
    finally:
        other.close()
        elsewhere.close()


def test_a_thread_waiting_for_the_in_process_lock_gets_busy_error(pool, db_path):
    """A writer queued behind another thread's block past its busy_timeout raises BusyError."""
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


def test_begin_waits_for_another_process_in_short_steps_once_it_has_met_one(pool, db_path, traced, monkeypatch):
    """After a BEGIN has waited for a writer outside this process, BEGINs retry every step, busy_timeout restored.

    The step is abathur_db.pool.BUSY_STEP_MS as it is at the BEGIN.
    """
    monkeypatch.setattr(abathur_db.pool, "BUSY_STEP_MS", 2)
    conn = pool.connection()
    # Not the package's connection, so no in-process lock: SQLite's busy handler is what waits for it.
    outsider = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    held = threading.Event()

    def hold_for(seconds):
        outsider.execute("BEGIN IMMEDIATE")
        held.set()
        threading.Event().wait(seconds)
        outsider.execute("COMMIT")

    try:
        for round_ in ("first", "stepped"):
            held.clear()
            holder = threading.Thread(target=hold_for, args=(0.2,))
            holder.start()
            assert held.wait(30)
            traced.clear()
            metrics.record(conn, round_, 1)
            holder.join(30)
            begins = traced.count("BEGIN IMMEDIATE")
            if round_ == "first":  # waited in SQLite's busy handler, one BEGIN: the process is now known busy
                assert begins == 1 and not any("busy_timeout" in sql for sql in traced)
                assert conn.write_lock.busy_until > time.monotonic()
        # In steps: the busy_timeout read and lowered, BEGIN tried again and again, the busy_timeout restored.
        assert traced[:2] == ["PRAGMA busy_timeout", "PRAGMA busy_timeout = 2"]
        assert begins > 1 and traced[begins + 2] == "PRAGMA busy_timeout = 5000", traced
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert [m["metric_name"] for m in metrics.query(conn)] == ["first", "stepped"]
    finally:
        outsider.close()


def test_a_process_waits_in_steps_through_its_first_moments_on_a_file_and_after_each_pause(tmp_path, monkeypatch):
    """A process's BEGINs on a file retry in steps for FIRST_SECONDS from its first, and PAUSE_STEPS after a pause.

    Other processes may be writing the file unseen, or have started since this one last
    wrote, their lock free between commits too briefly for SQLite's busy handler, whose
    sleeps grow to 100 ms, to catch. The BEGINs of a process writing on send no PRAGMA.
    """
    monkeypatch.setattr(abathur_db.pool, "FIRST_SECONDS", 0.1)
    monkeypatch.setattr(abathur_db.pool, "PAUSE_SECONDS", 0.3)
    monkeypatch.setattr(abathur_db.pool, "PAUSE_STEPS", 2)
    pool = abathur_db.open(tmp_path / "new.db")  # the schema's statements are the process's first on the file
    conn = pool.connection()

    def first_sent(writes: int) -> list[str]:
        """Return the first statement each of `writes` writes sends."""
        firsts = []
        for _ in range(writes):
            with tracing(conn) as sent:
                metrics.record(conn, "written", 1)
            firsts.append(sent[0])
        return firsts

    with tracing(conn) as sent:
        metrics.record(conn, "first", 1)
    assert sent[:3] == ["PRAGMA busy_timeout", "PRAGMA busy_timeout = 1", "BEGIN IMMEDIATE"], sent
    assert until(lambda: time.monotonic() > conn.write_lock.busy_until)
    assert first_sent(1) == ["BEGIN IMMEDIATE"]  # 0.1 s after the last BEGIN: no pause
    time.sleep(0.35)
    assert first_sent(3) == ["PRAGMA busy_timeout", "PRAGMA busy_timeout", "BEGIN IMMEDIATE"]
    assert len(metrics.query(conn)) == 5


def test_a_begin_in_steps_gives_up_at_the_busy_timeout(pool, db_path):
    """A BEGIN in steps raises BusyError once the connection's own busy_timeout has passed, and restores it."""
    conn = pool.connection()
    conn.execute("PRAGMA busy_timeout = 100")
    conn.write_lock.busy_until = float("inf")
    outsider = sqlite3.connect(db_path, isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BusyError, match="locked"):
            metrics.record(conn, "never", 1)
    finally:
        outsider.execute("ROLLBACK")
        outsider.close()
        conn.write_lock.busy_until = 0.0
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 100 and not conn.in_transaction
    assert conn.write_lock.holder is None


def test_a_busy_timeout_left_lowered_is_given_back_by_the_next_block(conn):
    """A busy_timeout a BEGIN in steps lowered and could not restore (interrupted twice) is back once a block starts."""
    conn.execute("PRAGMA busy_timeout = 1")
    conn.busy_ms = 5000  # as _begin records it before lowering the value
    with transaction(conn):
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.busy_ms is None


def test_a_thread_writing_in_a_tight_loop_does_not_starve_another(pool, db_path):
    """A thread committing write after write lets another thread's writes in well within its busy_timeout."""
    from abathur_db import audit

    started, stop = threading.Event(), threading.Event()

    def hammer():
        conn = pool.connection()
        started.set()
        while not stop.is_set():
            audit.record(conn, "tight loop")

    conn = pool.connection()
    # The taker of a freed lock is the thread that asks first, so without the hand-off
    # to a long waiter the hammering thread takes it every time and this one times out.
    conn.execute("PRAGMA busy_timeout = 1000")
    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        assert started.wait(30)
        for _ in range(20):
            audit.record(conn, "between")
    finally:
        stop.set()
        thread.join(30)
    assert len(audit.list(conn, limit=1000)) > 20


# ---------------------------------------------------------------------------------------
# An exception at any point: a signal handler's exception can surface wherever the
# interpreter checks for pending signals, which is right after a call returns and at
# the start of a Python function. A profile function sees exactly those moments
# ("c_return" and "call" events), so raising from it at the n-th one, for every n,
# reproduces every place a signal could strike.

PACKAGE = os.path.dirname(abathur_db.__file__)


class Interrupt(BaseException):
    """What a signal handler raises (a BaseException, as KeyboardInterrupt is)."""


class _InterruptAt:
    """A profile function that raises Interrupt at the n-th call or C return inside the package."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.where = n, 0, None

    def __call__(self, frame, event, arg):
        if event in ("call", "c_return") and frame.f_code.co_filename.startswith(PACKAGE):
            self.seen += 1
            if self.seen == self.n:
                sys.setprofile(None)
                self.where = f"{self.n}: {os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {event}"
                raise Interrupt(self.where)


def _metric_block(conn):
    with transaction(conn):
        metrics.record(conn, "m", 1)


def _nested_blocks(conn):
    with transaction(conn):
        with transaction(conn):
            metrics.record(conn, "m", 1)


def _claim(conn):
    conn.execute("INSERT INTO tasks (id, prompt) VALUES ('claim-me', 'p')")
    tasks.claim_next(conn)


def _stepped_block(conn):
    conn.write_lock.busy_until = float("inf")  # as if another process were writing: BEGIN in steps
    _metric_block(conn)


def _claimed_or_written(conn) -> int:
    return conn.execute("SELECT count(*) FROM metrics").fetchone()[0] + conn.execute(
        "SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()[0]


def _others_can_write(pool, db_path) -> bool:
    """Return whether another thread of this process, waiting for nothing, can write at once."""

    def write():
        other = abathur_db.connect(db_path)
        try:
            other.execute("PRAGMA busy_timeout = 0")
            metrics.record(other, "other", 1)
        finally:
            other.close()
        return True

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        return executor.submit(write).result(timeout=60)


# Python reports an exception raised in a __del__ as "ignored" (a warning under pytest) and drops it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("scenario", [_metric_block, _nested_blocks, _claim, lambda conn: metrics.record(conn, "m", 1),
                                      _stepped_block],
                         ids=["block", "nested-blocks", "claim_next", "own-transaction", "begin-in-steps"])
def test_an_exception_at_any_point_leaves_all_or_nothing(pool, db_path, scenario):
    """An exception wherever a signal can strike leaves the write whole or absent, no transaction or lock held.

    A busy_timeout lowered for a BEGIN in steps is back by the next block at the latest.
    """
    conn = pool.connection()
    for n in itertools.count(1):
        conn.execute("DELETE FROM metrics")
        conn.execute("DELETE FROM tasks")
        interrupt = _InterruptAt(n)
        sys.setprofile(interrupt)
        try:
            scenario(conn)
        except Interrupt:
            pass
        finally:
            sys.setprofile(None)
        if interrupt.where is None:
            break  # the n-th moment never came: every earlier one was tried
        # Where it struck inside a __del__, Python dropped it: the call then succeeded.
        assert not conn.in_transaction, interrupt.where
        assert _claimed_or_written(conn) in (0, 1), interrupt.where
        assert _others_can_write(pool, db_path), interrupt.where
        metrics.record(conn, "afterwards", 1)  # the interrupted connection works on
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000, interrupt.where
    conn.write_lock.busy_until = 0.0
    assert n > 20 and _claimed_or_written(conn) == 1


# ---------------------------------------------------------------------------------------
# Statements SQLite refuses, connections the package did not open or that were closed by hand.

# sqlite3_set_authorizer's action and first argument for each transaction-control statement.
BEGIN, COMMIT, ROLLBACK = (22, "BEGIN"), (22, "COMMIT"), (22, "ROLLBACK")
SAVEPOINT, RELEASE = (32, "BEGIN"), (32, "RELEASE")
TRANSACTION_MODULE = sys.modules["abathur_db.transaction"]


def _refusing(conn, statement: tuple[int, str]) -> None:
    """Make SQLite refuse one kind of transaction-control statement on `conn` ("not authorized")."""
    conn.set_authorizer(lambda action, arg1, *rest: sqlite3.SQLITE_DENY if (action, arg1) == statement
                        else sqlite3.SQLITE_OK)


@pytest.mark.parametrize("refused, kept", [(SAVEPOINT, 1), (RELEASE, 2)], ids=["SAVEPOINT", "RELEASE"])
def test_a_refused_savepoint_statement_is_the_package_error(conn, refused, kept):
    """A SAVEPOINT or RELEASE that SQLite refuses raises AbathurDBError; the outer block carries on and commits."""
    with transaction(conn):
        conn.execute(INSERT)
        _refusing(conn, refused)
        with pytest.raises(AbathurDBError, match="not authorized") as caught:
            with transaction(conn):
                conn.execute(INSERT)
        conn.set_authorizer(None)
        assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
        assert conn.blocks == 1
    assert _count(conn) == kept  # a refused RELEASE leaves the inner write in the outer transaction
    assert not conn.in_transaction and conn.blocks == 0


def test_a_refused_commit_rolls_back_and_raises_the_package_error(conn):
    """A COMMIT that SQLite refuses raises AbathurDBError, rolls the block back and gives the lock back."""
    _refusing(conn, COMMIT)
    with pytest.raises(AbathurDBError, match="not authorized"):
        with transaction(conn):
            conn.execute(INSERT)
    conn.set_authorizer(None)
    assert not conn.in_transaction and conn.write_lock.holder is None and _count(conn) == 0


def test_a_refused_rollback_is_the_package_error(conn):
    """A ROLLBACK that SQLite refuses raises AbathurDBError (the block's error in its context), freeing the lock."""
    _refusing(conn, ROLLBACK)
    with pytest.raises(AbathurDBError, match="not authorized") as caught:
        with transaction(conn):
            conn.execute(INSERT)
            raise RuntimeError("the block fails")
    conn.set_authorizer(None)
    assert isinstance(caught.value.__cause__.__context__, RuntimeError)
    assert conn.write_lock.holder is None
    conn.execute("ROLLBACK")
    assert _count(conn) == 0


def test_a_refused_begin_hands_the_in_process_lock_to_a_waiting_thread(pool, monkeypatch):
    """When BEGIN fails, the in-process write lock goes at once to the thread queued for it, which is woken."""
    conn = pool.connection()
    wakes = []
    real_wake = pool_module._WriteLock.wake

    def wake(lock):
        wakes.append(lock)
        real_wake(lock)

    monkeypatch.setattr(pool_module._WriteLock, "wake", wake)
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        waiter = []

        def authorize(action, arg1, *rest):
            if (action, arg1) == BEGIN:  # conn holds the in-process lock now: queue another thread for it
                waiter.append(executor.submit(lambda: metrics.record(pool.connection(), "waited", 1)))
                for _ in range(30_000):
                    if conn.write_lock.waiting:
                        break
                    threading.Event().wait(0.001)
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        conn.set_authorizer(authorize)
        with pytest.raises(AbathurDBError, match="not authorized"):
            with transaction(conn):
                pass  # pragma: no cover - the block is never entered
        conn.set_authorizer(None)
        assert wakes == [conn.write_lock]  # the waiter was woken, not left to poll
        assert waiter[0].result(timeout=30)["metric_name"] == "waited"


def test_a_plain_sqlite3_connection_works_without_the_protections(db_path, pool):
    """A connection the package did not open can be used, in blocks and nested blocks, leaving no state behind."""
    plain = sqlite3.connect(db_path, isolation_level=None)
    try:
        with transaction(plain):
            metrics.record(plain, "plain", 1)
            with transaction(plain):
                metrics.record(plain, "nested", 2)
        plain.execute("BEGIN IMMEDIATE")  # the caller's own transaction: package blocks nest in it
        with transaction(plain):
            metrics.record(plain, "inside the caller's", 3)
        plain.execute("COMMIT")
        _refusing(plain, BEGIN)
        with pytest.raises(AbathurDBError, match="not authorized"):
            tasks.create(plain, "refused")
        plain.set_authorizer(None)
        assert [m["metric_name"] for m in metrics.query(plain)] == ["plain", "nested", "inside the caller's"]
        assert TRANSACTION_MODULE._PLAIN == {}
    finally:
        plain.close()


def test_a_connection_closed_by_hand_raises_configuration_error(pool):
    """Calls on a connection its user closed raise ConfigurationError, reads, writes and blocks alike."""
    conn = pool.connection()
    conn.close()
    for call in (lambda: tasks.get(conn, "t"), lambda: tasks.create(conn, "p"), lambda: transaction(conn).__enter__()):
        with pytest.raises(ConfigurationError, match="closed"):
            call()


def test_a_transaction_no_block_owns_is_rolled_back_by_the_next_block(conn):
    """A transaction the package began but no block owns any more (two interruptions) is undone by the next block."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(INSERT)
    conn.began = True  # as a block interrupted twice over leaves it: begun, no block open
    with transaction(conn):
        conn.execute(INSERT)
    assert _count(conn) == 1 and not conn.in_transaction


def test_leaving_a_nested_block_after_sqlite_rolled_back_is_refused(conn):
    """Leaving a nested block normally once SQLite rolled the transaction back raises, keeping nothing."""
    with pytest.raises(AbathurDBError, match="rolled back before its block ended"):
        with transaction(conn):
            with transaction(conn):
                conn.execute(INSERT)
                conn.execute("ROLLBACK")
    assert _count(conn) == 0 and conn.blocks == 0


@pytest.mark.parametrize("exc_type", [None, RuntimeError], ids=["normal-end", "exception"])
def test_a_forked_child_leaves_an_inherited_block_without_a_statement(conn, monkeypatch, exc_type):
    """In a forked child, leaving an inherited block sends nothing; leaving it normally raises ConfigurationError."""
    block = transaction(conn)
    block.__enter__()
    conn.execute(INSERT)
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    owner, child_pid = conn.owner, os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child_pid)  # as seen from the child ...
    conn.owner = None  # ... whose fork handler disowned the parent's connections
    try:
        if exc_type is None:
            with pytest.raises(ConfigurationError, match="cannot commit it"):
                block.__exit__(None, None, None)
        else:
            assert block.__exit__(exc_type, exc_type(), None) is False
    finally:
        monkeypatch.undo()
        conn.owner = owner
        conn.set_trace_callback(None)
    assert sent == [] and conn.in_transaction and conn.blocks == 0
    conn.execute("ROLLBACK")  # the parent's business, done by hand here
    conn.write_lock.pop(0)


def test_a_connection_closed_by_hand_inside_a_block_gives_the_lock_back(pool):
    """A block whose connection was closed by hand ends with the block's own error, the write lock given back."""
    conn = pool.connection()
    with pytest.raises(RuntimeError, match="the block's own"):
        with transaction(conn):
            conn.close()  # SQLite rolls back as it closes
            raise RuntimeError("the block's own")
    assert conn.write_lock.holder is None and conn.blocks == 0


def test_a_block_never_entered_does_nothing_when_dropped(conn, traced, monkeypatch):
    """A transaction() object that is never entered sends nothing and raises nothing when it is dropped."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    block = transaction(conn)
    del block
    gc.collect()
    assert traced == [] and unraisable == [] and not conn.in_transaction


def test_a_refused_begin_leaves_nothing_that_could_roll_back_the_callers_own_transaction(pool, db_path):
    """After BEGIN IMMEDIATE fails, a block inside the caller's own later transaction joins it, undoing nothing."""
    conn = pool.connection()
    holder = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 0")
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(abathur_db.BusyError):
            with transaction(conn):
                pass  # pragma: no cover - the block is never entered
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("BEGIN IMMEDIATE")  # the caller's own transaction
    conn.execute(INSERT)
    with transaction(conn):
        metrics.record(conn, "in the caller's transaction", 2)
    conn.execute("COMMIT")
    assert _count(conn) == 2


def test_a_block_that_ended_runs_no_code_as_it_is_dropped(conn):
    """Only a block left without its exit has a finalizer: Python drops a signal handler's exception raised in one,
    and each write makes and drops a block, so that a KeyboardInterrupt would now and then be lost."""
    block = transaction(conn)
    with block:
        metrics.record(conn, "m", 1)
    called: list[str] = []
    sys.setprofile(lambda frame, event, arg: called.append(frame.f_code.co_name) if event == "call" else None)
    try:
        del block
    finally:
        sys.setprofile(None)
    assert "__del__" not in called and metrics.query(conn)[0]["metric_name"] == "m"


def test_a_block_dropped_on_another_thread_is_left_to_its_owner(pool):
    """A block object deallocated on a thread that does not own its connection leaves the block open for its owner."""
    entered, dropped = threading.Event(), threading.Event()
    handed = {}

    def owner():
        conn = pool.connection()
        block = handed["block"] = transaction(conn)
        block.__enter__()
        metrics.record(conn, "the owner's", 1)
        entered.set()
        assert dropped.wait(30)
        still_open = conn.in_transaction and conn.blocks == 1
        block.__exit__(None, None, None)
        return still_open

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        future = executor.submit(owner)
        assert entered.wait(30)
        handed["block"].__del__()  # what deallocation on this thread would run
        dropped.set()
        assert future.result(timeout=30) is True
    assert [m["metric_name"] for m in metrics.query(pool.connection())] == ["the owner's"]


def test_a_plain_connection_keeps_its_block_state_across_nested_blocks(db_path, pool):
    """On a plain sqlite3 connection, a write after a nested block ended still joins the outer block as is."""
    plain = sqlite3.connect(db_path, isolation_level=None)
    sent: list[str] = []
    try:
        with transaction(plain):
            with transaction(plain):
                metrics.record(plain, "nested", 1)
            plain.set_trace_callback(sent.append)
            metrics.record(plain, "after it", 2)
            plain.set_trace_callback(None)
        assert [m["metric_name"] for m in metrics.query(plain)] == ["nested", "after it"]
    finally:
        plain.close()
    assert len(sent) == 1 and sent[0].startswith("INSERT INTO metrics"), sent
    assert TRANSACTION_MODULE._PLAIN == {}
