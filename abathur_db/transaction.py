"""Explicit transactions: BEGIN IMMEDIATE … COMMIT, with SAVEPOINTs when nested."""

from __future__ import annotations

import sqlite3

from .errors import translate

__all__ = ["transaction", "write"]

_SAVEPOINT = "abathur_db"


class transaction:  # noqa: N801 - used like a function: `with transaction(conn):`
    """Run a block in one write transaction on `conn`, or in a SAVEPOINT if one is open.

    The outermost level sends ``BEGIN IMMEDIATE`` so that the write lock is taken
    (waiting up to busy_timeout) before anything is read: a deferred transaction
    that reads and then writes fails with SQLITE_BUSY at once, ignoring the
    timeout. Any exception, KeyboardInterrupt included, rolls the block back.
    """

    __slots__ = ("_conn", "_nested")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._nested = False

    def __enter__(self) -> sqlite3.Connection:
        self._nested = self._conn.in_transaction
        try:
            self._conn.execute(f"SAVEPOINT {_SAVEPOINT}" if self._nested else "BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        return self._conn

    def __exit__(self, exc_type, exc, tb) -> bool:
        conn = self._conn
        if exc_type is None:
            try:
                conn.execute(f"RELEASE {_SAVEPOINT}" if self._nested else "COMMIT")
                return False
            except sqlite3.Error as commit_exc:
                self._rollback()
                raise translate(commit_exc) from commit_exc
        self._rollback()
        return False

    def _rollback(self) -> None:
        conn = self._conn
        # Some errors (SQLITE_FULL, SQLITE_IOERR, ...) make SQLite roll back by itself.
        if not conn.in_transaction:
            return
        if self._nested:
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
            conn.execute(f"RELEASE {_SAVEPOINT}")
        else:
            conn.execute("ROLLBACK")


def write(conn: sqlite3.Connection, table: str, sql: str, params: dict) -> list[tuple]:
    """Run one write statement in its own or the caller's transaction; return its rows.

    The rows are those of a RETURNING clause, read to the end before the commit.
    A failure leaves nothing behind and is raised as the package's error for `table`.
    """
    try:
        if conn.in_transaction:
            # One statement is atomic on its own: a failing one is undone and the
            # caller's transaction stays open, so no savepoint is needed.
            return conn.execute(sql, params).fetchall()
        with transaction(conn):
            return conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise translate(exc, table, params, conn) from exc
