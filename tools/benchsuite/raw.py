"""The raw sqlite3 side: connections configured as the package's, writes, row decoding, seeding SQL."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from abathur_db.pool import PRAGMAS


@dataclass(frozen=True)
class Tuning:
    """Optional PRAGMAs applied to every connection the suite uses, package and raw alike."""

    cache_size_kib: int | None = None
    mmap_size: int | None = None

    def apply(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """Apply the PRAGMAs to `conn` and return it."""
        # Integers from argparse only: PRAGMA takes no bound parameters.
        if self.cache_size_kib is not None:
            conn.execute(f"PRAGMA cache_size = -{int(self.cache_size_kib)}")
        if self.mmap_size is not None:
            conn.execute(f"PRAGMA mmap_size = {int(self.mmap_size)}").fetchall()
        return conn

    def describe(self) -> str:
        """Return the PRAGMAs as text ("package defaults" when none)."""
        parts = []
        if self.cache_size_kib is not None:
            parts.append(f"cache_size=-{self.cache_size_kib}")
        if self.mmap_size is not None:
            parts.append(f"mmap_size={self.mmap_size}")
        return ", ".join(parts) or "package defaults"


def raw_connect(path: str, tuning: Tuning = Tuning(), *, foreign_keys: bool = True) -> sqlite3.Connection:
    """Open a plain sqlite3 connection with the package's PRAGMA settings, as a careful raw user would."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    # The package's own table of settings, so raw and package always run alike.
    for name, value in PRAGMAS:
        if name == "foreign_keys":
            value = int(foreign_keys)
        conn.execute(f"PRAGMA {name} = {value}").fetchall()
    return tuning.apply(conn)


def raw_write(conn: sqlite3.Connection, sql: str, params: dict) -> list[tuple]:
    """Run one write in BEGIN IMMEDIATE … COMMIT on a raw connection; return its RETURNING rows."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(sql, params).fetchall()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return rows


def decode(row: tuple, columns: tuple[str, ...], json_columns: tuple[str, ...]) -> dict:
    """Turn one raw row into a dict with its JSON columns decoded (the raw side's own decoder)."""
    result = dict(zip(columns, row))
    for name in json_columns:
        text = result[name]
        if text is not None:
            # The package decodes the commonest values, "[]" and "{}", without the parser; so does raw,
            # or the raw side would do more work than the package and flatter it.
            empty = _EMPTY_JSON.get(text)
            result[name] = empty() if empty else json.loads(text)
    return result


_EMPTY_JSON = {"[]": list, "{}": dict}


def dumps(value: Any) -> str:
    """Return `value` as compact JSON, with the same options the package uses."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


# Whole rows, column for column: the data set is seeded with these, and the write-cost
# workloads insert fresh rows with them.
INSERT_SQL = {
    "sessions": "INSERT INTO sessions (id, app_name, user_id, project_id, status, events, state, metadata,"
                " created_at, last_update_time, terminated_at, archived_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "memory_entries": "INSERT INTO memory_entries (id, namespace, key, value, memory_type, version,"
                      " is_deleted, metadata, created_by, updated_by, created_at, updated_at)"
                      " VALUES (?, ?, ?, ?, ?, 1, 0, '{}', ?, ?, ?, ?)",
    "tasks": "INSERT INTO tasks (id, prompt, agent_type, priority, status, input_data, result_data,"
             " error_message, retry_count, max_retries, max_execution_timeout_seconds, submitted_at,"
             " started_at, completed_at, last_updated_at, created_by, parent_task_id, dependencies,"
             " session_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 3, 3600, ?, ?, ?, ?, ?, ?, ?, ?)",
    "agents": "INSERT INTO agents (id, name, specialization, task_id, state, model, spawned_at,"
              " terminated_at, resource_usage, session_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "audit": "INSERT INTO audit (timestamp, agent_id, task_id, action_type, action_data, result,"
             " memory_operation_type, memory_namespace, memory_entry_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "checkpoints": "INSERT INTO checkpoints (task_id, iteration, state, created_at, session_id)"
                   " VALUES (?, ?, ?, ?, ?)",
    "state": "INSERT INTO state (task_id, key, value, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
    "metrics": "INSERT INTO metrics (timestamp, metric_name, metric_value, labels) VALUES (?, ?, ?, ?)",
}
