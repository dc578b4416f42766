"""The audit trail: record what agents did (memory operations included), list it back."""

from __future__ import annotations

import builtins
import sqlite3
from typing import Any, Callable, cast

from . import _paging, _retention, _values
from .errors import ValidationError
from .rows import AuditRow
from .transaction import Row, rows, write

TABLE = "audit"
MEMORY_OPERATION_TYPES = ("create", "update", "delete", "consolidate", "publish")
COLUMNS = (
    "id", "timestamp", "agent_id", "task_id", "action_type", "action_data", "result",
    "memory_operation_type", "memory_namespace", "memory_entry_id",
)
JSON_COLUMNS = ("action_data",)
decode_row = cast("Callable[[Row], AuditRow]", _values.decoder(TABLE, COLUMNS, JSON_COLUMNS))
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM audit"

# Every list query takes a lower time bound, `since` (an open one when not given),
# which keeps a single statement per query, each a range search on its index. Pages:
# see _paging; id, the rowid, breaks ties between rows of the same millisecond.
_PAGE = ("timestamp >= :since AND " + _paging.descending("timestamp")
         + " ORDER BY timestamp DESC, id DESC LIMIT :limit")
LIST_SQL = {
    "task_id": _SELECT + " WHERE task_id = :task_id AND " + _PAGE,  # U1
    "latest": _SELECT + " WHERE " + _PAGE,  # U2
    "memory_operation_type": _SELECT + " WHERE memory_operation_type = :memory_operation_type AND " + _PAGE,  # U3
    "memory_entry_id": _SELECT + " WHERE memory_entry_id = :memory_entry_id AND " + _PAGE,  # U4
}

# Kept with RETURNING although the row is known: it gives the statement a journal of its own,
# without which a full disk midway makes SQLite roll back the caller's whole transaction.
_INSERT = (
    "INSERT INTO audit (timestamp, agent_id, task_id, action_type, action_data, result,"
    " memory_operation_type, memory_namespace, memory_entry_id)"
    " VALUES (:timestamp, :agent_id, :task_id, :action_type, :action_data, :result,"
    " :memory_operation_type, :memory_namespace, :memory_entry_id)"
    " RETURNING " + ", ".join(COLUMNS)
)


def record(
    conn: sqlite3.Connection,
    action_type: str,
    *,
    task_id: str | None = None,
    agent_id: str | None = None,
    action_data: Any = None,
    result: str | None = None,
    memory_operation_type: str | None = None,
    memory_namespace: str | None = None,
    memory_entry_id: int | None = None,
) -> AuditRow:
    """Append one audit row, timestamped now, and return it.

    `action_data` is any JSON value (None stores SQL NULL).

    :raises ForeignKeyError: when the task, agent or memory entry does not exist.
    """
    _values.require_text(action_type, TABLE, "action_type")
    _values.require_text(task_id, TABLE, "task_id", optional=True)
    _values.require_text(agent_id, TABLE, "agent_id", optional=True)
    _values.require_text(result, TABLE, "result", optional=True)
    if memory_operation_type is not None:
        _values.require_choice(memory_operation_type, MEMORY_OPERATION_TYPES, TABLE, "memory_operation_type")
    _values.require_text(memory_namespace, TABLE, "memory_namespace", optional=True)
    if memory_entry_id is not None:
        _values.require_int(memory_entry_id, TABLE, "memory_entry_id", 1)
    params = {
        "timestamp": _values.now(),
        "agent_id": agent_id,
        "task_id": task_id,
        "action_type": action_type,
        "action_data": None if action_data is None else _values.to_json(action_data, TABLE, "action_data"),
        "result": result,
        "memory_operation_type": memory_operation_type,
        "memory_namespace": memory_namespace,
        "memory_entry_id": memory_entry_id,
    }
    return write(conn, TABLE, _INSERT, params, decode_row)[0]


def list(  # noqa: A001 - the module's API reads audit.list(conn, ...)
    conn: sqlite3.Connection,
    *,
    task_id: str | None = None,
    memory_entry_id: int | None = None,
    memory_operation_type: str | None = None,
    since: Any = None,
    limit: int = _paging.DEFAULT_LIMIT,
    after: AuditRow | None = None,
) -> builtins.list[AuditRow]:
    """Return at most `limit` audit rows, newest first, recorded at or after `since`.

    Filter by at most one of `task_id`, `memory_entry_id` or
    `memory_operation_type`; with none, return the latest rows. `after` is the last
    row of the previous page.
    """
    filters = {
        name: value
        for name, value in (
            ("task_id", task_id),
            ("memory_entry_id", memory_entry_id),
            ("memory_operation_type", memory_operation_type),
        )
        if value is not None
    }
    if len(filters) > 1:
        raise ValidationError(
            f"{TABLE}: list() takes at most one of task_id, memory_entry_id or memory_operation_type,"
            f" got {sorted(filters)}"
        )
    if task_id is not None:
        _values.require_text(task_id, TABLE, "task_id")
    if memory_entry_id is not None:
        _values.require_int(memory_entry_id, TABLE, "memory_entry_id", 1)
    if memory_operation_type is not None:
        _values.require_choice(memory_operation_type, MEMORY_OPERATION_TYPES, TABLE, "memory_operation_type")
    params = {
        **filters,
        "since": _values.time_range(since, None, TABLE)["since"],
        "limit": _paging.require_limit(limit, TABLE),
    }
    last = None if after is None else _paging.anchor(after, TABLE, {"timestamp": str, "id": int})
    _paging.set_start(params, last, newest_first=True)
    query = LIST_SQL[next(iter(filters), "latest")]
    return rows(conn, TABLE, query, params, decode_row)


PRUNE_SQL = _retention.prune_sql(TABLE)


def prune(conn: sqlite3.Connection, *, before: Any = None, older_than: Any = None,
          batch_size: int = _retention.BATCH_SIZE) -> int:
    """Delete the audit rows stamped before `before`, or older than `older_than`; return how many went.

    Exactly one of the two: `before` an aware datetime or ISO 8601 string, `older_than`
    a ``datetime.timedelta`` back from now. See ``_retention.prune`` for the batches.
    """
    return _retention.prune(conn, TABLE, PRUNE_SQL, before, older_than, batch_size)
