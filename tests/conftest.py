"""Shared fixtures: a fresh database per test, and every pool closed afterwards."""

from __future__ import annotations

import pytest

import abathur_db
from abathur_db import pool as pool_module


@pytest.fixture
def db_path(tmp_path):
    """Return the path of a database file that does not exist yet."""
    return tmp_path / "abathur.db"


@pytest.fixture
def pool(db_path):
    """Return a pool on a new database with the whole schema applied."""
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
