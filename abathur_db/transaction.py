"""Explicit transactions (BEGIN IMMEDIATE … COMMIT, SAVEPOINTs when nested) and the one door for SQL.

Every statement the table modules send goes through `one`, `rows` or `write`: they
refuse a connection that is not the calling thread's (or is closed, or is a copy a
forked child inherited), hold the connection's guard while SQLite runs a statement
outside a transaction block (so Pool.close() never closes it under one), and raise
the package's errors, never sqlite3's.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from threading import get_ident
from types import TracebackType
from typing import Any, Callable, Iterator, Literal, TypeGuard, TypeVar, cast, overload

from . import pool
from .errors import AbathurDBError, BusyError, ConfigurationError, translate, translated
from .pool import _SQLITE_BUSY, _Connection, _in_transaction, _WriteLock, close_connection, sleep_on

__all__ = ["CommitSignal", "commit_signal", "hold", "one", "rows", "transaction", "write", "write_many"]

_SAVEPOINT = "SAVEPOINT abathur_db"
_RELEASE = "RELEASE abathur_db"
_ROLLBACK_TO = "ROLLBACK TO abathur_db"

Params = dict[str, Any] | tuple[Any, ...]
Row = tuple[Any, ...]  # a row as sqlite3 returns it
_T = TypeVar("_T")

class _Plain:
    """What the package keeps about a plain sqlite3 connection it did not open.

    Such a connection works, but without the protections of the package's own: no
    thread check, no guard against Pool.close(), no in-process write lock.
    """

    __slots__ = ("blocks", "began", "epoch", "guard", "write_lock", "closing", "owner", "busy_ms")

    def __init__(self) -> None:
        self.blocks = self.epoch = 0
        self.began = self.closing = False
        self.guard = contextlib.nullcontext()
        self.write_lock = self.owner = self.busy_ms = None


_PLAIN: dict[int, _Plain] = {}  # by id(): plain connections inside a transaction() block
_IDLE = _Plain()  # every other plain connection (never changed)
# What the SQL layer keeps about a connection. Its fast path, `conn if getattr(conn,
# "owner", None) == get_ident() else _admit(conn)`, yields a _Connection when the owner
# matches, which a type checker cannot see from the getattr(): those lines tell it so
# with an ignore of [assignment] rather than with cast(), a call on every statement.
_State = _Connection | _Plain


def _lost() -> AbathurDBError:
    return AbathurDBError(
        "the transaction was rolled back before its block ended (SQLite does that by itself after"
        " an I/O error, an interrupt, or a full disk it cannot undo statement by statement): none"
        " of the block's writes were kept; leave the block and start again"
    )


def _admit(conn: sqlite3.Connection) -> _State:
    """Return what the package keeps about `conn` (the connection itself, when the package opened it).

    Raise ConfigurationError when the calling thread may not use it: another
    thread's, closed, or inherited through os.fork(). The owning thread may still
    finish a transaction block it was in when Pool.close() was called.
    """
    if not isinstance(conn, _Connection):
        return _PLAIN.get(id(conn), _IDLE)
    if conn.pid != os.getpid():
        raise ConfigurationError(
            f"{conn.path}: this connection was opened by process {conn.pid} and inherited through os.fork();"
            f" process {os.getpid()} must open its own (pool.connection() does)"
        )
    me = threading.current_thread()
    if conn.thread != me.ident:
        raise ConfigurationError(
            f"{conn.path}: this connection belongs to thread {conn.thread_name!r} ({conn.thread}); thread"
            f" {me.name!r} ({me.ident}) may not use it: each thread takes its own from pool.connection()"
        )
    if conn.closing and conn.blocks:
        return conn
    raise ConfigurationError(f"{conn.path}: the connection is closed (pool.close() closes them all)")


class CommitSignal:
    """Counts the package's commits to one database file in this process, and wakes the threads waiting for one.

    Each waiter sleeps on a lock of its own (see pool.sleep_on).
    """

    __slots__ = ("count", "_guard", "_gates", "waiting")

    def __init__(self) -> None:
        self.count = 0
        self._guard = threading.Lock()
        self._gates: list[threading.Lock] = []  # one per waiting thread, held until a commit
        self.waiting = 0

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a commit beyond the first `seen`; return whether one came."""
        gate = threading.Lock()
        gate.acquire()
        with self._guard:
            if self.count != seen:
                return True
            self._gates.append(gate)
        sleep_on(gate, timeout, self._guard, self._gates)
        return self.count != seen

    def announce(self) -> None:
        """Count a commit and wake every waiting thread."""
        with self._guard:
            self.count += 1
            gates, self._gates = self._gates, []
        for gate in gates:
            gate.release()


class _NoSignal:
    """What a connection the package did not open waits on: nothing but the time."""

    count = 0

    @staticmethod
    def wait(seen: int, timeout: float) -> bool:
        time.sleep(timeout)
        return False


# The signals of the files some thread of this process is waiting on, by id() of the
# file's in-process write lock (which every connection of the package to that file
# shares). Empty unless a thread waits, so a commit then costs one truth test.
_SIGNALS: dict[int, CommitSignal] = {}
_SIGNALS_GUARD = threading.Lock()


@contextlib.contextmanager
def commit_signal(conn: sqlite3.Connection) -> Iterator[CommitSignal | _NoSignal]:
    """Yield the commit signal of `conn`'s file, announced by every commit the package makes to it meanwhile.

    A connection the package did not open has no such signal: the one yielded only
    lets the time pass. Commits of other processes are never announced.
    """
    lock = getattr(conn, "write_lock", None)
    if lock is None:
        yield _NoSignal()
        return
    key = id(lock)  # the lock lives as long as the connection that holds it
    with _SIGNALS_GUARD:
        signal = _SIGNALS.setdefault(key, CommitSignal())
        signal.waiting += 1
    try:
        yield signal
    finally:
        with _SIGNALS_GUARD:
            signal.waiting -= 1
            if not signal.waiting and _SIGNALS.get(key) is signal:
                del _SIGNALS[key]


def _forget_signals() -> None:
    global _SIGNALS_GUARD
    # A forked child has none of the parent's waiting threads, and new write locks
    # whose id() may repeat a parent's.
    _SIGNALS_GUARD = threading.Lock()
    _SIGNALS.clear()


os.register_at_fork(after_in_child=_forget_signals)


def hold(conn: sqlite3.Connection) -> contextlib.AbstractContextManager[object, None]:
    """Return a context manager under which the caller may send its own statements on `conn`.

    Like the functions below, it refuses a connection the calling thread may not use,
    and keeps Pool.close() from closing it meanwhile.
    """
    state: _State = conn if getattr(conn, "owner", None) == get_ident() else _admit(conn)  # type: ignore[assignment]
    return state.guard


def block_depth(conn: sqlite3.Connection) -> int:
    """Return how many transaction() blocks are open on `conn`, refusing a connection the thread may not use."""
    state: _State = conn if getattr(conn, "owner", None) == get_ident() else _admit(conn)  # type: ignore[assignment]
    return state.blocks


def in_block(conn: sqlite3.Connection) -> bool:
    """Return whether `conn` has a transaction open, refusing, as hold() does, a connection the thread may not use."""
    with hold(conn), translated():
        return conn.in_transaction


@overload
def one(conn: sqlite3.Connection, table: str | None, sql: str, params: Params = (), decode: None = None) -> Any: ...
@overload
def one(conn: sqlite3.Connection, table: str | None, sql: str, params: Params,
        decode: Callable[[Row], _T]) -> _T | None: ...
def one(conn: sqlite3.Connection, table: str | None, sql: str, params: Params = (),
        decode: Callable[[Row], Any] | None = None) -> Any:
    """Run one SELECT and return its first row (decoded by `decode` when given), or None."""
    state: _State = conn if getattr(conn, "owner", None) == get_ident() else _admit(conn)  # type: ignore[assignment]
    with state.guard:
        try:
            row = conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise translate(exc, table, params, conn) from exc
    return row if row is None or decode is None else decode(row)


@overload
def rows(conn: sqlite3.Connection, table: str | None, sql: str, params: Params = (),
         decode: None = None) -> list[Any]: ...
@overload
def rows(conn: sqlite3.Connection, table: str | None, sql: str, params: Params,
         decode: Callable[[Row], _T]) -> list[_T]: ...
def rows(conn: sqlite3.Connection, table: str | None, sql: str, params: Params = (),
         decode: Callable[[Row], Any] | None = None) -> list[Any]:
    """Run one SELECT and return all its rows (each decoded by `decode` when given)."""
    state: _State = conn if getattr(conn, "owner", None) == get_ident() else _admit(conn)  # type: ignore[assignment]
    with state.guard:
        try:
            found = conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, table, params, conn) from exc
    return found if decode is None else [decode(row) for row in found]


@overload
def write(conn: sqlite3.Connection, table: str, sql: str, params: Params, decode: None = None) -> list[Any]: ...
@overload
def write(conn: sqlite3.Connection, table: str, sql: str, params: Params,
          decode: Callable[[Row], _T]) -> list[_T]: ...
def write(conn: sqlite3.Connection, table: str, sql: str, params: Params,
          decode: Callable[[Row], Any] | None = None) -> list[Any]:
    """Run one write statement in its own or the caller's transaction; return its rows.

    The rows are those of a RETURNING clause, read to the end, and decoded by `decode`
    when given, all before the commit: a row that cannot be decoded rolls the write
    back. A failure leaves nothing behind and is raised as the package's error for
    `table`.
    """
    state: _State = conn if getattr(conn, "owner", None) == get_ident() else _admit(conn)  # type: ignore[assignment]
    if state.blocks and conn.in_transaction:
        # One statement is atomic on its own: a failing one is undone and the caller's
        # transaction stays open, so no savepoint is needed.
        return _write(conn, state, table, sql, params, decode)
    with transaction(conn):
        return _write(conn, state, table, sql, params, decode)


def _write(conn: sqlite3.Connection, state: _State, table: str, sql: str, params: Params,
           decode: Callable[[Row], Any] | None) -> list[Any]:
    # Inside a block: Pool.close() leaves the connection open until the block ends.
    try:
        found = conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise translate(exc, table, params, conn) from exc
    if decode is None or not found:
        return found
    try:
        return [decode(row) for row in found]
    except BaseException:
        # The statement cannot be undone alone inside the caller's block (it has no
        # savepoint of its own): the whole transaction goes, as SQLite itself does
        # after an I/O error, and the block then refuses to carry on (see _lost).
        _rollback(conn, state)
        raise


def write_many(conn: sqlite3.Connection, table: str, sql: str, params: list[dict[str, Any]]) -> None:
    """Run one write statement without RETURNING once per parameter set, all in one transaction, in order.

    Each run must change exactly one row, triggers included: a failure is then raised
    as the package's error for `table` quoting the parameters of the run that failed,
    and, outside a transaction block, leaves nothing behind. Inside the caller's block
    the runs before the failing one stay until that block rolls back.
    """
    state: _State = conn if getattr(conn, "owner", None) == get_ident() else _admit(conn)  # type: ignore[assignment]
    if state.blocks and conn.in_transaction:
        return _write_many(conn, table, sql, params)
    with transaction(conn):
        return _write_many(conn, table, sql, params)


def _write_many(conn: sqlite3.Connection, table: str, sql: str, params: list[dict[str, Any]]) -> None:
    before = conn.total_changes
    try:
        conn.executemany(sql, params)
    except sqlite3.Error as exc:
        done = conn.total_changes - before  # one row per run: the failing run's index
        raise translate(exc, table, params[done] if done < len(params) else None, conn) from exc


def _rollback(conn: sqlite3.Connection, state: _State) -> None:
    with state.guard, translated():
        if _in_transaction(conn):  # not after SQLite rolled back by itself, or closing
            conn.execute("ROLLBACK")


class transaction:  # noqa: N801 - used like a function: `with transaction(conn):`
    """Run a block in one write transaction on `conn`, or in a SAVEPOINT if one is open.

    The outermost level sends ``BEGIN IMMEDIATE`` so that the write lock is taken
    (waiting up to busy_timeout) before anything is read: a deferred transaction
    that reads and then writes fails with SQLITE_BUSY at once, ignoring the
    timeout. Any exception, at any point (a signal handler's, raised while BEGIN
    waited for another process, included), rolls back whatever the block began.
    If SQLite rolls the whole transaction back by itself (an I/O error, an
    interrupt, a full disk under a statement without RETURNING), the package's
    writes later in the block, and leaving the block normally, raise
    AbathurDBError instead of running, or committing, outside any transaction.
    A forked child never commits or rolls back a transaction it inherited.
    """

    __slots__ = ("_conn", "_state", "_nested", "_epoch", "_depth")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._nested = False
        # While entered and not yet exited: the connection's epoch (one per outermost
        # block) and this block's depth in it, else 0.
        self._epoch = self._depth = 0

    def __enter__(self) -> sqlite3.Connection:
        conn = self._conn
        state: _State
        state = conn if getattr(conn, "owner", None) == get_ident() else _admit(conn)  # type: ignore[assignment]
        if state is _IDLE:
            state = _PLAIN[id(conn)] = _Plain()
        self._state = state
        if state.began and not state.blocks:
            self._abort()  # a block interrupted twice over left its transaction behind
        if state.busy_ms is not None:
            _restore_busy_timeout(conn, state)  # likewise, a lowered busy_timeout
        depth = state.blocks
        # blocks > 0 tells Pool.close() to leave the connection open until the
        # outermost block ends; it is raised under the guard, which close() checks under.
        try:
            nested = self._nested = conn.in_transaction
        except sqlite3.Error as exc:  # closed by hand
            raise translate(exc) from exc
        if nested:
            with state.guard:
                state.blocks = depth + 1
            try:
                conn.execute(_SAVEPOINT)
            except BaseException as exc:
                state.blocks = depth
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc) from exc
                raise
            # An exception from here on leaves an unused savepoint inside the outer
            # transaction, which that transaction's end disposes of.
            self._epoch, self._depth = state.epoch, depth + 1
            self.__class__ = _Entered
            return conn
        if depth:
            raise _lost()
        lock = state.write_lock
        try:
            if lock is not None and lock.setdefault(0, conn) is not conn:
                _wait_for(cast(_Connection, conn), lock)  # only the package's connections have a lock
            with state.guard:
                state.blocks = 1
            state.epoch += 1
            state.began = True
            _begin(conn, state, lock)
        except BaseException as exc:
            self._abort()
            if isinstance(exc, sqlite3.Error):
                raise translate(exc) from exc
            raise
        self._epoch, self._depth = state.epoch, 1
        self.__class__ = _Entered
        return conn

    def _abort(self) -> None:
        """Undo what an outermost __enter__ reached: its transaction, its flags, its lock."""
        conn, state = self._conn, self._state
        try:
            if state.began:
                _rollback(conn, state)
        finally:
            state.began = False
            state.blocks = 0
            if state.busy_ms is not None:
                _restore_busy_timeout(conn, state)
            lock = state.write_lock
            if lock is not None and lock.get(0) is conn:
                try:
                    if lock.turn.since:
                        lock.give_turn()
                finally:  # an exception in there still gives the in-process lock back
                    lock.pop(0)
                    if lock.waiting:
                        lock.wake()
            if state is not conn:
                _PLAIN.pop(id(conn), None)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        self.__class__ = transaction
        conn, state = self._conn, self._state
        self._epoch = 0
        if state.owner is None and _inherited(conn):
            return _leave_inherited(conn, exc_type)
        if self._nested:
            try:
                if exc_type is None:
                    if not conn.in_transaction:
                        raise _lost()
                    conn.execute(_RELEASE)
                elif conn.in_transaction:
                    conn.execute(_ROLLBACK_TO)
                    conn.execute(_RELEASE)
            except sqlite3.Error as end_exc:
                raise translate(end_exc) from end_exc
            finally:
                state.blocks -= 1
                if state is not conn and not state.blocks:
                    _PLAIN.pop(id(conn), None)
            return False
        try:
            if exc_type is None:
                if not conn.in_transaction:
                    raise _lost()
                conn.execute("COMMIT")
                state.began = False  # committed: nothing left to roll back
        except sqlite3.Error as end_exc:
            raise translate(end_exc) from end_exc
        finally:
            # Whatever happened above (a failed COMMIT, an exception of the block, a
            # signal), nothing this block began outlives it uncommitted. No call comes
            # before the flags are reset, so an exception cannot fall in between.
            try:
                if state.began:
                    _rollback(conn, state)
            finally:
                state.began = False
                state.blocks = 0
                lock = state.write_lock
                if lock is not None:
                    try:
                        if lock.turn.since and lock.get(0) is conn:
                            lock.give_turn()
                    finally:  # an exception in there still gives the in-process lock back
                        lock.pop(0, None)
                        if lock.waiting:
                            lock.wake()
                if state.closing:
                    close_connection(cast(_Connection, conn))  # only the package's connections close so
                elif state is not conn:
                    _PLAIN.pop(id(conn), None)
        if exc_type is None and state.write_lock is not None:  # committed
            state.write_lock.checkpointer.committed()
            signal = _SIGNALS.get(id(state.write_lock)) if _SIGNALS else None
            if signal is not None:  # a thread waits for commits
                signal.announce()
        return False


class _Entered(transaction):
    """A transaction block entered and not yet exited: only such a block has a finalizer.

    A signal handler's exception raised as a __del__ runs is dropped there (Python
    reports it as unraisable): a block that every write creates and drops must not
    have one, or a KeyboardInterrupt would now and then be lost.
    """

    __slots__ = ()

    def __del__(self) -> None:
        # The with statement entered the block but never ran __exit__: a signal struck
        # as the block ended, at __exit__'s first instruction, where Python checks for
        # pending signals. Once that exception lets go of the block (its traceback holds
        # it), undo what the block began, as __exit__ would have; unless the transaction
        # it belonged to has ended meanwhile (an outer block's exit rolled it all back).
        epoch = self._epoch
        if epoch and self._state.epoch == epoch and self._state.blocks == self._depth and _owned_here(self._conn):
            self.__exit__(BaseException, None, None)


def _inherited(conn: sqlite3.Connection) -> TypeGuard[_Connection]:
    return isinstance(conn, _Connection) and conn.pid != os.getpid()


def _owned_here(conn: sqlite3.Connection) -> bool:
    """Return whether this process and thread may end a block on `conn` (any may, on a plain connection)."""
    return not isinstance(conn, _Connection) or (conn.pid == os.getpid() and conn.thread == get_ident())


def _leave_inherited(conn: _Connection, exc_type: type[BaseException] | None) -> Literal[False]:
    # The block was open when the process forked: the transaction is the parent's,
    # which commits or rolls it back itself. Ending it here would undo the parent's
    # work in the WAL index both processes share.
    conn.blocks = max(conn.blocks - 1, 0)
    if exc_type is None:
        raise ConfigurationError(
            f"{conn.path}: this transaction was opened by process {conn.pid} before os.fork(); process"
            f" {os.getpid()} cannot commit it (the parent does)"
        )
    return False


def _begin(conn: sqlite3.Connection, state: _State, lock: _WriteLock | None) -> None:
    """Send BEGIN IMMEDIATE; while other processes write the file, take this process's turn first (see _turn).

    SQLite's busy handler sleeps in steps growing to 100 ms, so a process whose BEGIN
    keeps finding the lock taken sleeps through hundreds of the other processes'
    commits (3 processes × 4 threads completing and claiming: calls waiting 100-540
    ms at worst; 40-100 ms in steps). Once a BEGIN has waited, those of the next
    pool.BUSY_SECONDS retry every pool.BUSY_STEP_MS instead, the connection's busy_timeout
    lowered meanwhile. Retrying that often moves the lock between processes every few
    commits, so once a retry finds the lock taken (or another process is seen holding
    the turn), BEGIN takes the process's turn first; it still retries in steps if a
    writer that takes no turn holds the lock, or if the wait for the turn ran out.
    With the turn, no other process of the package writes: BEGIN then waits in SQLite's
    handler, whose first sleeps are as short as the steps, and sends no PRAGMA (each
    statement lets the interpreter lock go; 3 processes × 4 threads completing and
    claiming: 4-15 % more tasks a second), unless a BEGIN under the turn lately found
    the lock taken by a writer that takes no turn.
    """
    if lock is None:
        conn.execute("BEGIN IMMEDIATE")
        return
    started = time.monotonic()
    if started - lock.last_begin > pool.PAUSE_SECONDS:  # the process's first BEGIN on the file, or one after a pause
        started = _resume(lock, started)
    lock.last_begin = started
    if lock.shared_until <= started and lock.probe_at <= started:
        lock.probe_at = started + pool.PROBE_SECONDS
        if lock.turn.taken_elsewhere():  # another process writes the file and has the turn
            lock.shared_until = started + pool.BUSY_SECONDS
    if (lock.shared_until <= started) is not lock.turn.plain:  # tell arriving processes (see _resume)
        lock.turn.write_plain(not lock.turn.plain)
    turn_waited = lock.turns_from <= started < lock.shared_until and not lock.turn.take(0)
    held = lock.turn.since > 0 and started >= lock.stray_until
    if not turn_waited and (held or (started >= lock.busy_until and lock.paused_steps <= 0)):
        conn.execute("BEGIN IMMEDIATE")
        if time.monotonic() - started > (pool.STRAY_SEEN_SECONDS if held else pool.BUSY_SEEN_SECONDS):
            # Likely another process's lock, but perhaps only this thread descheduled:
            # turns start once a BEGIN in steps finds the lock taken.
            lock.busy_until = time.monotonic() + pool.BUSY_SECONDS
            if held:
                lock.stray_until = lock.busy_until
        return
    if lock.paused_steps > 0:
        lock.paused_steps -= 1
    waited_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    deadline = started + waited_ms / 1000
    # Another process has the turn: wait for it, then BEGIN in steps within what is left.
    turn_missed = turn_waited and not lock.turn.take(min(waited_ms / 1000, pool.TURN_WAIT_SECONDS))
    if turn_waited:
        lock.shared_until = started + pool.BUSY_SECONDS
    state.busy_ms = waited_ms  # recorded first: whatever interrupts what follows, it is given back
    try:
        conn.execute(f"PRAGMA busy_timeout = {pool.BUSY_STEP_MS}").fetchall()
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                if turn_missed:  # and SQLite's lock was free: the turn's holder is not writing
                    lock.turns_from = lock.probe_at = time.monotonic() + pool.BUSY_SECONDS
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != _SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
                lock.busy_until = lock.shared_until = time.monotonic() + pool.BUSY_SECONDS  # another process writes
                if lock.turn.since:
                    lock.stray_until = lock.busy_until
                turn_missed = False
    finally:
        _restore_busy_timeout(conn, state)


def _resume(lock: _WriteLock, started: float) -> float:
    """Prepare the first BEGIN on the file in a while (pool.PAUSE_STEPS) or ever; return the time it starts.

    Another process may have started writing meanwhile, unseen: the next PAUSE_STEPS
    BEGINs wait in steps. A process's very first BEGIN also waits in steps for
    FIRST_SECONDS, and, should another process be marked as a writer of the file,
    holds the turn first while a process writes without turns, up to ARRIVAL_SECONDS
    (see pool).
    """
    lock.paused_steps = pool.PAUSE_STEPS
    if lock.last_begin >= 0:
        return started
    lock.busy_until = started + pool.FIRST_SECONDS
    if pool.ARRIVAL_SECONDS > 0 and lock.turn.arrive():
        if lock.turn.take(0):
            until = started + pool.ARRIVAL_SECONDS
            while lock.turn.plain_elsewhere() and (left := until - time.monotonic()) > 0:
                time.sleep(min(left, pool.ARRIVAL_STEP_SECONDS))
        started = time.monotonic()  # the wait is no sign of a writer without turns
        lock.shared_until = started + pool.BUSY_SECONDS
    return started


def _restore_busy_timeout(conn: sqlite3.Connection, state: _State) -> None:
    """Give `conn` back the busy_timeout _begin lowered, if any (nothing to give on a closed connection)."""
    if state.busy_ms is not None:
        with contextlib.suppress(sqlite3.ProgrammingError):
            conn.execute(f"PRAGMA busy_timeout = {int(state.busy_ms)}").fetchall()
        state.busy_ms = None


def _wait_for(conn: _Connection, lock: _WriteLock) -> None:
    """Take `lock`, held by another connection, waiting no longer than the connection's busy_timeout."""
    holder = cast("_Connection | None", lock.holder)  # only the package's connections take it
    if holder is not None and holder.thread == conn.thread:
        raise ConfigurationError(
            f"{conn.path}: this thread ({conn.thread_name!r}) already holds the write lock through another"
            " connection, inside a transaction block: a second connection of the same thread would wait for"
            " itself. Finish that block first, or write through the same connection"
        )
    timeout = one(conn, None, "PRAGMA busy_timeout")[0] / 1000
    if not lock.wait(conn, timeout):
        raise BusyError(
            f"{conn.path}: database is locked: another thread of this process held its write lock"
            " past busy_timeout"
        )
