"""Background checkpoints (abathur_db._checkpointer): a real thread on a real database file."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading

import pytest

import abathur_db
from abathur_db import _checkpointer, metrics, transaction
from abathur_db import pool as pool_module
from abathur_db._checkpointer import Checkpointer
from helpers import SignalledCondition, fork_and_wait, interrupting, until


@pytest.fixture
def every_5(monkeypatch):
    monkeypatch.setattr(_checkpointer, "CHECKPOINT_EVERY", 5)


def test_every_checkpoint_every_commits_a_background_checkpoint_copies_the_wal_back(pool, db_path, every_5):
    """Only committed writes count; at the 5th, a thread of its own copies every WAL frame into the database."""
    conn = pool.connection()
    checkpointer = pool_module._write_lock(str(db_path)).checkpointer
    for _ in range(5):
        with pytest.raises(KeyError), transaction(conn):
            metrics.record(conn, "rolled back", 1)
            raise KeyError
    assert checkpointer.commits == 0
    for i in range(4):
        metrics.record(conn, "m", i)
    assert (checkpointer.commits, checkpointer.runs) == (4, 0)
    metrics.record(conn, "m", 4)
    assert until(lambda: checkpointer.runs == 1)
    busy, frames, copied = checkpointer.last
    assert busy == 0 and copied == frames > 0
    assert checkpointer.conn is not None  # kept for the next one
    pool.close()
    assert checkpointer.conn is None


def test_the_files_last_connection_closed_by_hand_closes_the_checkpoints_connection(tmp_path, every_5):
    """Closing the process's last connection to the file closes the thread's too: the WAL is folded in and gone."""
    path = tmp_path / "by_hand.db"
    abathur_db.open(path).close()
    first, second = abathur_db.connect(path), abathur_db.connect(path)
    checkpointer = pool_module._write_lock(str(path)).checkpointer
    for i in range(5):
        metrics.record(first, "m", i)
    assert until(lambda: checkpointer.runs == 1)
    metrics.record(first, "after the checkpoint", 5)  # only in the WAL
    first.close()
    assert checkpointer.conn is not None  # `second` is still open
    second.close()
    assert checkpointer.conn is None and not os.path.exists(f"{path}-wal")
    with contextlib.closing(sqlite3.connect(path)) as copy:  # the database file alone holds every commit
        assert copy.execute("SELECT count(*) FROM metrics").fetchone()[0] == 6


def test_the_background_checkpoints_connection_closes_once_idle(pool, db_path, every_5, monkeypatch):
    """Unused for IDLE_SECONDS, the thread's connection is closed; the next checkpoint opens another."""
    monkeypatch.setattr(_checkpointer, "IDLE_SECONDS", 0.05)
    conn = pool.connection()
    checkpointer = pool_module._write_lock(str(db_path)).checkpointer
    for round_ in (1, 2):
        for i in range(5):
            metrics.record(conn, "m", i)
        assert until(lambda: checkpointer.runs == round_ and checkpointer.conn is None)
        assert checkpointer.last is not None and checkpointer.last[0] == 0


def _commits(checkpointer: Checkpointer) -> None:
    for _ in range(_checkpointer.CHECKPOINT_EVERY):
        checkpointer.committed()


def test_a_background_checkpoint_never_creates_a_missing_database(tmp_path):
    """A file deleted or not yet there stays absent; the thread lives on and checkpoints once it exists."""
    path = str(tmp_path / "gone.db")
    checkpointer = Checkpointer(path)
    _commits(checkpointer)
    assert until(lambda: checkpointer.runs == 1)
    assert checkpointer.last is None and not os.path.exists(path)
    with abathur_db.open(path) as pool:
        metrics.record(pool.connection(), "m", 1)  # one commit: the pool's own checkpointer stays idle
        _commits(checkpointer)
        assert until(lambda: checkpointer.runs == 2)
        busy, frames, copied = checkpointer.last
        assert busy == 0 and copied == frames > 0
        checkpointer.close()


def test_a_thread_that_cannot_start_leaves_the_checkpoints_to_sqlite_until_one_can(tmp_path, monkeypatch):
    """No thread to be had: the commit goes on, nothing runs; at the next CHECKPOINT_EVERY commits one starts."""
    start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with abathur_db.open(str(tmp_path / "t.db")) as pool:
        metrics.record(pool.connection(), "m", 1)
        checkpointer = Checkpointer(str(tmp_path / "t.db"))
        monkeypatch.setattr(threading.Thread, "start", refuse)
        _commits(checkpointer)
        assert checkpointer._thread is None and checkpointer.runs == 0
        monkeypatch.setattr(threading.Thread, "start", start)
        _commits(checkpointer)
        assert until(lambda: checkpointer.runs == 1)
        checkpointer.close()


def test_a_signal_as_the_thread_starts_leaves_no_thread_behind_and_the_next_checkpoint_starts_one(tmp_path,
                                                                                                  monkeypatch):
    """A signal handler's exception raised in Thread.start(): the thread, which runs here, ends at once, so that no
    second one shares the checkpoints' connection with it; the next CHECKPOINT_EVERY commits start one."""
    start, started = threading.Thread.start, []

    def interrupted(thread: threading.Thread) -> None:
        start(thread)
        started.append(thread)
        raise KeyboardInterrupt

    with abathur_db.open(str(tmp_path / "t.db")) as pool:
        metrics.record(pool.connection(), "m", 1)
        checkpointer = Checkpointer(str(tmp_path / "t.db"))
        monkeypatch.setattr(threading.Thread, "start", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _commits(checkpointer)
        monkeypatch.setattr(threading.Thread, "start", start)
        (orphan,) = started
        orphan.join(5)
        assert not orphan.is_alive() and checkpointer._thread is None and checkpointer.runs == 0
        _commits(checkpointer)
        assert until(lambda: checkpointer.runs == 1) and checkpointer._thread not in (None, orphan)
        checkpointer.close()


class _Blocked:
    """A checkpoint that opens its connection, then waits for `go`."""

    def __init__(self) -> None:
        self.go, self.began, self.calls = threading.Event(), threading.Event(), 0

    def __call__(self, checkpointer: Checkpointer):
        self.calls += 1
        if checkpointer.conn is None:
            checkpointer.conn = sqlite3.connect(checkpointer.path, check_same_thread=False)
        self.began.set()
        assert self.go.wait(30)
        return (0, 0, 0)


def test_pool_close_waits_for_a_background_checkpoint_and_drops_one_asked_for(pool, db_path, every_5, monkeypatch):
    """close() returns once the checkpoint under way has ended, its connection closed; one asked for never runs."""
    blocked = _Blocked()
    monkeypatch.setattr(Checkpointer, "_checkpoint", lambda checkpointer: blocked(checkpointer))
    conn = pool.connection()
    checkpointer = pool_module._write_lock(str(db_path)).checkpointer
    for i in range(10):  # the 5th starts a checkpoint; the 10th asks for another
        metrics.record(conn, "m", i)
    assert blocked.began.wait(30)
    closer = threading.Thread(target=pool.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # waiting for the checkpoint under way
    blocked.go.set()
    closer.join(30)
    assert not closer.is_alive() and checkpointer.conn is None
    assert (blocked.calls, checkpointer.runs, checkpointer._pending) == (1, 1, False)


@pytest.mark.parametrize("wait", ["close", "pause"])
def test_a_signal_while_waiting_for_a_checkpoint_under_way_raises_the_handlers_exception(db_path, pool, monkeypatch,
                                                                                         wait):
    """close() and pause() wait on a lock, not on a Condition a signal could leave unlocked (see SignalledCondition):
    the handler's exception surfaces, nothing is left held, and the next call waits for the checkpoint as before."""
    blocked = _Blocked()
    monkeypatch.setattr(Checkpointer, "_checkpoint", lambda checkpointer: blocked(checkpointer))
    with monkeypatch.context() as patched:
        patched.setattr(threading, "Condition", SignalledCondition)
        checkpointer = Checkpointer(str(db_path))
    _commits(checkpointer)
    assert blocked.began.wait(30)
    undo = interrupting(0.1)
    try:
        with pytest.raises(TimeoutError):
            getattr(checkpointer, wait)()
    finally:
        undo()
    assert checkpointer.running and checkpointer.conn is not None
    blocked.go.set()
    getattr(checkpointer, wait)()
    assert (checkpointer.running, checkpointer.runs) == (False, 1)
    if wait == "pause":
        checkpointer.resume()
        checkpointer.close()
    assert checkpointer.conn is None


def test_a_fork_waits_for_a_background_checkpoint_under_way_and_the_child_closes_the_idle_copy(pool, db_path, every_5,
                                                                                                monkeypatch):
    """os.fork() returns only once the checkpoint under way has ended, so no package thread is inside SQLite at the
    fork; the child closes its copy of the thread's connection, as SQLite advises, and the parent's stays open."""
    blocked = _Blocked()
    monkeypatch.setattr(Checkpointer, "_checkpoint", lambda checkpointer: blocked(checkpointer))
    conn = pool.connection()
    checkpointer = pool_module._write_lock(str(db_path)).checkpointer
    for i in range(5):
        metrics.record(conn, "m", i)
    assert blocked.began.wait(30)
    copy = checkpointer.conn

    def closed() -> None:
        assert not checkpointer.running
        with pytest.raises(sqlite3.ProgrammingError):
            copy.execute("SELECT 1")

    codes: list[int] = []
    forker = threading.Thread(target=lambda: codes.append(fork_and_wait(closed)))
    try:
        forker.start()
        forker.join(0.2)
        assert forker.is_alive() and not codes  # the fork waits for the checkpoint
    finally:
        blocked.go.set()
    forker.join(30)
    assert codes == [0]
    assert until(lambda: checkpointer.runs == 1 and not checkpointer.running)
    copy.execute("SELECT 1")  # the parent's own is untouched
    for i in range(5):  # after the fork, checkpoints run again
        metrics.record(conn, "m", i)
    assert until(lambda: checkpointer.runs == 2)
