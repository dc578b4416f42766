"""Shared fixtures: a fresh database per test, and every pool closed afterwards (plain helpers: helpers.py)."""

from __future__ import annotations

import math
import shutil

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
def pool(db_path, schema_file, monkeypatch):
    """Return a pool on a new database with the whole schema applied.

    The file is a copy of one the schema was applied to once: applying it costs about
    six times as much as copying, for each of the many tests that start from it.
    """
    shutil.copy(schema_file, db_path)  # its mode too: owner only, as open() makes a new file
    opened = abathur_db.open(db_path)
    # As a process writing without pauses, past its first moments on its files (pool.PAUSE_SECONDS,
    # pool.FIRST_SECONDS): its BEGINs wait in SQLite's handler, no PRAGMA sent, until another
    # process is seen writing (test_transaction covers the steps).
    monkeypatch.setattr(pool_module, "PAUSE_SECONDS", math.inf)
    return opened


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
