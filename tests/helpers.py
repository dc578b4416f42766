"""Plain helpers the tests import: not fixtures, as a "spawn" worker calls one and the others wrap part of a test."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


def on_data_version(waiting, nth: int = 2):
    """Return a trace callback that sets `waiting` at the `nth` PRAGMA data_version claim_next reads.

    The first is read before the claim it tries at once; the second, after that claim
    found nothing, as the wait begins; each later one after a poll interval of waiting.
    """
    seen = []

    def trace(sql: str) -> None:
        if sql == "PRAGMA data_version":
            seen.append(sql)
            if len(seen) == nth:
                waiting.set()

    return trace


@contextlib.contextmanager
def tracing(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """Collect the statements `conn` sends inside the block, as SQLite's trace shows them."""
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    try:
        yield sent
    finally:
        conn.set_trace_callback(None)


@contextlib.contextmanager
def unchecked(conn: sqlite3.Connection) -> Iterator[None]:
    """Let the block store rows that break CHECK constraints, as an upgrade keeps them or a buggy writer leaves them."""
    conn.execute("PRAGMA ignore_check_constraints = ON")
    try:
        yield
    finally:
        conn.execute("PRAGMA ignore_check_constraints = OFF")
