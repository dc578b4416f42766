"""Small per-task key/values: set (upsert), get, delete."""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, cast

from . import _values
from .rows import StateRow
from .transaction import Row, one, write

TABLE = "state"
COLUMNS = ("id", "task_id", "key", "value", "created_at", "updated_at")
JSON_COLUMNS = ("value",)
decode_row = cast("Callable[[Row], StateRow]", _values.decoder(TABLE, COLUMNS, JSON_COLUMNS))

GET_SQL = "SELECT value FROM state WHERE task_id = :task_id AND key = :key"  # K1

# An existing key keeps its id and created_at; only value and updated_at move.
_UPSERT = (
    "INSERT INTO state (task_id, key, value, created_at, updated_at)"
    " VALUES (:task_id, :key, :value, :created_at, :updated_at)"
    " ON CONFLICT (task_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
    " RETURNING " + ", ".join(COLUMNS)
)
_DELETE = "DELETE FROM state WHERE task_id = :task_id AND key = :key RETURNING id"


def set(conn: sqlite3.Connection, task_id: str, key: str, value: Any) -> StateRow:  # noqa: A001
    """Store `value` (any JSON value) under `key` for the task, replacing any earlier value; return the row.

    :raises ForeignKeyError: when the task does not exist.
    """
    _values.require_text(task_id, TABLE, "task_id")
    _values.require_text(key, TABLE, "key")
    now = _values.now()
    params = {
        "task_id": task_id,
        "key": key,
        "value": _values.to_json(value, TABLE, "value"),
        "created_at": now,
        "updated_at": now,
    }
    return write(conn, TABLE, _UPSERT, params, decode_row)[0]


def get(conn: sqlite3.Connection, task_id: str, key: str, default: Any = None) -> Any:
    """Return the value stored under `key` for the task, or `default` when there is none."""
    _values.require_text(task_id, TABLE, "task_id")
    _values.require_text(key, TABLE, "key")
    params = {"task_id": task_id, "key": key}
    row = one(conn, TABLE, GET_SQL, params)
    return default if row is None else _values.decode_json(row[0], TABLE, "value", params, ("task_id", "key"))


def delete(conn: sqlite3.Connection, task_id: str, key: str) -> bool:
    """Remove `key` from the task's state; return whether it was there."""
    _values.require_text(task_id, TABLE, "task_id")
    _values.require_text(key, TABLE, "key")
    return bool(write(conn, TABLE, _DELETE, {"task_id": task_id, "key": key}))
