"""Explicit transactions: BEGIN IMMEDIATE … COMMIT, with SAVEPOINTs when nested."""

from __future__ import annotations

import sqlite3

from .errors import AbathurDBError, BusyError, translate

__all__ = ["transaction", "write"]

_SAVEPOINT = "SAVEPOINT abathur_db"
_RELEASE = "RELEASE abathur_db"
_ROLLBACK_TO = "ROLLBACK TO abathur_db"

# Connections inside transaction() blocks, and how deeply nested. After an I/O error,
# an interrupt, or SQLITE_FULL / SQLITE_NOMEM in a statement without a statement
# journal (one without RETURNING), SQLite rolls the whole transaction back by itself;
# a caller that caught the error and carried on inside its block would then write in
# autocommit mode and keep part of what the block meant to be all or nothing.
_OPEN_BLOCKS: dict[sqlite3.Connection, int] = {}


def _lost() -> AbathurDBError:
    return AbathurDBError(
        "the transaction was rolled back before its block ended (SQLite does that by itself after"
        " an I/O error, an interrupt, or a full disk it cannot undo statement by statement): none"
        " of the block's writes were kept; leave the block and start again"
    )


class transaction:  # noqa: N801 - used like a function: `with transaction(conn):`
    """Run a block in one write transaction on `conn`, or in a SAVEPOINT if one is open.

    The outermost level sends ``BEGIN IMMEDIATE`` so that the write lock is taken
    (waiting up to busy_timeout) before anything is read: a deferred transaction
    that reads and then writes fails with SQLITE_BUSY at once, ignoring the
    timeout. Any exception, KeyboardInterrupt included, rolls the block back.
    If SQLite rolls the whole transaction back by itself (an I/O error, an
    interrupt, a full disk under a statement without RETURNING), the package's
    writes later in the block, and leaving the block normally, raise
    AbathurDBError instead of running, or committing, outside any transaction.
    """

    __slots__ = ("_conn", "_nested", "_lock")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._nested = False
        self._lock = None

    def __enter__(self) -> sqlite3.Connection:
        conn = self._conn
        nested = self._nested = conn.in_transaction
        depth = _OPEN_BLOCKS.get(conn, 0)
        if depth and not nested:
            raise _lost()
        if not nested:
            # The in-process write lock of a pooled connection (see pool._WRITE_LOCKS).
            lock = self._lock = getattr(conn, "write_lock", None)
            if lock is not None and not lock.acquire(blocking=False):
                _wait_for(conn, lock)
        try:
            conn.execute(_SAVEPOINT if nested else "BEGIN IMMEDIATE")
        except BaseException as exc:
            self._release()
            if isinstance(exc, sqlite3.Error):
                raise translate(exc) from exc
            raise
        _OPEN_BLOCKS[conn] = depth + 1
        return conn

    def __exit__(self, exc_type, exc, tb) -> bool:
        conn = self._conn
        depth = _OPEN_BLOCKS.pop(conn) - 1
        if depth:
            _OPEN_BLOCKS[conn] = depth
        try:
            if exc_type is None:
                if not conn.in_transaction:
                    raise _lost()
                try:
                    conn.execute(_RELEASE if self._nested else "COMMIT")
                    return False
                except sqlite3.Error as commit_exc:
                    self._rollback()
                    raise translate(commit_exc) from commit_exc
            self._rollback()
            return False
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _rollback(self) -> None:
        conn = self._conn
        # Some errors (SQLITE_FULL, SQLITE_IOERR, ...) make SQLite roll back by itself.
        if not conn.in_transaction:
            return
        if self._nested:
            conn.execute(_ROLLBACK_TO)
            conn.execute(_RELEASE)
        else:
            conn.execute("ROLLBACK")


def _wait_for(conn: sqlite3.Connection, lock) -> None:
    """Take `lock`, held by another thread, waiting no longer than the connection's busy_timeout."""
    timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0] / 1000
    if not lock.acquire(timeout=timeout):
        raise BusyError(
            "database is locked: another thread of this process held its write lock past busy_timeout"
        )


def write(conn: sqlite3.Connection, table: str, sql: str, params: dict) -> list[tuple]:
    """Run one write statement in its own or the caller's transaction; return its rows.

    The rows are those of a RETURNING clause, read to the end before the commit.
    A failure leaves nothing behind and is raised as the package's error for `table`.
    """
    try:
        if conn.in_transaction:
            # One statement is atomic on its own: a failing one is undone and the
            # caller's transaction stays open (unless SQLite rolls it all back, see
            # _OPEN_BLOCKS), so no savepoint is needed.
            return conn.execute(sql, params).fetchall()
        with transaction(conn):
            return conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise translate(exc, table, params, conn) from exc
