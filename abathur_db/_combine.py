"""Worker calls of several threads in one transaction, written by one of them.

With the write lock handed from thread to thread (pool._WriteLock), a worker waits
for each waiting thread's hold in turn: 10 threads completing and claiming tasks had
a per-task p99 of 11 ms. So while a thread of this process writes a file, a task-queue
call from another thread (create, claim, complete, fail, …) queues its statements on
the file's write lock instead. One queued thread, the leader, writes the queue on its
own connection, a transaction per batch, and wakes each caller with its result or
error; after pool.HANDOFF_SECONDS it hands the lead to the longest waiter. The same
10 threads: a p99 of 4 ms, as many tasks a second.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from threading import get_ident
from typing import Any, Callable, TypeVar, cast

from . import pool
from .errors import AbathurDBError
from .pool import _Connection, _WriteLock
from .transaction import Params, Row, transaction
from .transaction import write as transaction_write

__all__ = ["run", "write"]

_T = TypeVar("_T")
_RUNNING, _COMMITTING, _COMMITTED = 0, 1, 2  # how far a batch's transaction got


class _Call:
    """A queued call: its statements, the gate its thread sleeps on, and how it ended."""

    __slots__ = ("body", "gate", "result", "error", "done")

    def __init__(self, body: Callable[[sqlite3.Connection], Any]) -> None:
        self.body = body
        self.gate = threading.Lock()  # held while the caller sleeps; released once: it leads, or it is done
        self.gate.acquire()
        self.result: Any = None
        self.error: Exception | None = None
        self.done = False

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def run(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]) -> _T:
    """Return body(c) run in a write transaction on c: `conn`, or while another thread writes, a queued leader's."""
    lock = _lock_to_join(conn)
    if lock is not None:
        return _join(cast(_Connection, conn), lock, body)  # type: ignore[no-any-return]
    with transaction(conn):
        return body(conn)


def write(conn: sqlite3.Connection, table: str, sql: str, params: Params,
          decode: Callable[[Row], Any] | None = None) -> list[Any]:
    """Run transaction.write(), joining another thread's transaction as run() does."""
    lock = _lock_to_join(conn)
    if lock is not None:
        return _join(cast(_Connection, conn), lock,  # type: ignore[no-any-return]
                     lambda c: transaction_write(c, table, sql, params, decode))
    return transaction_write(conn, table, sql, params, decode)


def _lock_to_join(conn: sqlite3.Connection) -> _WriteLock | None:
    """Return the write lock whose queue a call on `conn` joins, or None when it writes itself.

    It joins while another thread of this process holds the lock or leads the queue, and
    only from its own thread, outside a block (where transaction() refuses, nests or
    repairs as for any block), and with no other process writing the file.
    """
    lock = getattr(conn, "write_lock", None)  # the package's connections only
    if lock is None or (lock.leader is None and 0 not in lock):
        return None
    own = cast(_Connection, conn)
    if own.owner != get_ident() or own.blocks or own.in_transaction:
        return None
    holder = lock.get(0)
    if holder is not None and holder.thread == own.thread:
        return None  # held by this thread through another connection: transaction() explains why it cannot wait
    if lock.shared_until > lock.last_begin:
        # Other processes write the file too, and it changes hands in turns (see _turn): 3
        # processes × 4 threads did 15 % fewer tasks a second with calls queued.
        return None
    return lock  # type: ignore[no-any-return]


def _join(conn: _Connection, lock: _WriteLock, body: Callable[[sqlite3.Connection], Any]) -> Any:
    me = _Call(body)
    try:
        with lock.calls_guard:
            lock.calls.append(me)
            if lock.leader is None:
                lock.leader = me
        # The cap bounds the wait should a wake-up be lost (a signal between a leader's two steps).
        while not me.done and lock.leader is not me:
            me.gate.acquire(timeout=0.25)
        return me.outcome() if me.done else _lead(conn, lock, me)
    except BaseException:
        _withdraw(lock, me)
        raise


def _withdraw(lock: _WriteLock, me: _Call) -> None:
    """After an exception in a caller's thread: leave the queue, and the lead to another, if either is still its."""
    with lock.calls_guard:
        if me in lock.calls:
            lock.calls.remove(me)
        if lock.leader is me:
            _pass_lead(lock)


def _pass_lead(lock: _WriteLock) -> None:
    """Under calls_guard: make the longest waiter the leader, or note that there is none."""
    lock.leader = lock.calls[0] if lock.calls else None
    if lock.leader is not None and lock.leader.gate.locked():  # only its caller acquires it
        lock.leader.gate.release()


def _lead(conn: _Connection, lock: _WriteLock, me: _Call) -> Any:
    """Write the queue in batches on `conn` until this call is done and HANDOFF_SECONDS have passed or none is left."""
    started = time.monotonic()
    while True:
        _serve(conn, lock, me)
        if me.done and time.monotonic() - started >= pool.HANDOFF_SECONDS:
            break
        if me.done and not lock.calls:
            time.sleep(0)  # lets the callers just woken run: most queue their next call
            if not lock.calls:
                break
    with lock.calls_guard:
        _pass_lead(lock)
    return me.outcome()


def _serve(conn: _Connection, lock: _WriteLock, me: _Call) -> None:
    """Write the calls queued by the time `conn` has the write lock in one transaction; end each, or queue it again.

    A call that fails with one of the package's errors ends with it and rolls the
    transaction back: the batch's other calls run again in the next one (savepoints
    would spare them that, at two statements a call). Should the write lock or COMMIT
    be refused, every call ends with that error. An exception that is not the
    package's (a signal handler's, say) is the leader's own; _settle deals with the
    batch's other calls.
    """
    current = None
    written = _RUNNING
    try:
        with transaction(conn):
            with lock.calls_guard:
                # No call in between: a signal cannot split the two. The batch counts among the
                # lock's waiters (its threads will be back with their next calls), so the
                # process keeps its turn meanwhile.
                lock.batch, lock.calls = lock.calls, []
            for current in lock.batch:
                current.result = current.body(conn)
            written = _COMMITTING
        written = _COMMITTED
        _end(lock.batch)
    except AbathurDBError as exc:  # the package's errors are the calls'; anything else is the leader's own
        if current is None and not lock.batch and conn.owner is None:
            # Its pool was closed: the leader's call ends, the others' wait for the next leader.
            with lock.calls_guard:
                if me in lock.calls:
                    lock.calls.remove(me)
            me.error = exc
            _end([me])
        elif current is None or written:  # the write lock or BEGIN was refused, or COMMIT failed: nothing was kept
            with lock.calls_guard:
                if not lock.batch:
                    lock.batch, lock.calls = lock.calls, []
            for call in lock.batch:
                call.error = exc
            _end(lock.batch)
        else:
            current.error = exc
            _end([current])
    finally:
        _settle(lock, written)


def _settle(lock: _WriteLock, written: int) -> None:
    """End or queue again each call of the batch left open, as far as `written` got; the batch is then over.

    Calls are left open by an exception in the leader's thread, wherever it struck. Before
    COMMIT nothing was kept, and they run again in the next batch; once COMMIT was sent
    they cannot, and end with their results, or, if it may not have finished, an error
    saying so.
    """
    left = [call for call in lock.batch if not call.done]
    if written == _RUNNING:
        _again(lock, left)
    else:
        if written == _COMMITTING:
            for call in left:
                call.error = AbathurDBError(
                    "the thread writing this call's transaction for it was interrupted as it committed: the"
                    " call may or may not have been written; read the row to find out"
                )
        _end(left)
    lock.batch = []


def _again(lock: _WriteLock, calls: list[_Call]) -> None:
    """Put `calls` back at the head of the queue, in their order, to run in the next batch."""
    with lock.calls_guard:
        lock.calls[:0] = calls


def _end(calls: list[_Call]) -> None:
    """Mark each call done and wake its caller (the leader's own wakes no one)."""
    for call in calls:
        call.done = True
        if call.gate.locked():  # only its caller acquires it; a leader may have found its lead without it
            call.gate.release()
