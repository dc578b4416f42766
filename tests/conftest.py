"""Shared fixtures: a fresh database per test, and every pool closed afterwards.

on_data_version, tracing and unchecked are plain functions, imported from here: a worker
process started with "spawn" needs the first, and the others wrap only part of a test.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Iterator

import pytest

import abathur_db
from abathur_db import pool as pool_module


@pytest.fixture
def db_path(tmp_path):
    """Return the path of a database file that does not exist yet."""
    return tmp_path / "abathur.db"


@pytest.fixture(scope="session")
def schema_file(tmp_path_factory):
    """Return a database file holding the whole schema and nothing else, its WAL folded in."""
    path = tmp_path_factory.mktemp("schema") / "schema.db"
    abathur_db.open(path).close()
    return path


@pytest.fixture
def pool(db_path, schema_file):
    """Return a pool on a new database with the whole schema applied.

    The file is a copy of one the schema was applied to once: applying it costs about
    six times as much as copying, for each of the many tests that start from it.
    """
    shutil.copy(schema_file, db_path)  # its mode too: owner only, as open() makes a new file
    return abathur_db.open(db_path)


@pytest.fixture
def conn(pool):
    """Return the test thread's connection to the new database."""
    return pool.connection()


@pytest.fixture(autouse=True)
def _close_every_pool():
    """Close every pool a test opened, whichever thread opened its connections."""
    yield
    for opened in list(pool_module._POOLS):
        opened.close()


@pytest.fixture
def make_task(conn):
    """Return a function inserting a minimal task by raw SQL (column defaults fill the rest)."""
    counter = iter(range(1, 1_000_000))

    def insert(task_id: str | None = None, **columns) -> str:
        task_id = task_id or f"task-{next(counter)}"
        names = ["id", "prompt", *columns]
        values = [task_id, "a prompt", *columns.values()]
        conn.execute(
            f"INSERT INTO tasks ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values
        )
        return task_id

    return insert


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
