"""Loop checkpoints, one per (task, iteration): save, load, list, prune."""

from __future__ import annotations

import builtins
import logging
import sqlite3
from typing import Any

from . import _paging, _values
from .errors import NotFoundError, short_repr
from .transaction import one, rows, write

TABLE = "checkpoints"
COLUMNS = ("task_id", "iteration", "state", "created_at", "session_id")
JSON_COLUMNS = ("state",)
decode_row = _values.decoder(TABLE, COLUMNS, JSON_COLUMNS, key=("task_id", "iteration"))
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM checkpoints"


LOAD_LATEST_SQL = _SELECT + " WHERE task_id = :task_id ORDER BY iteration DESC LIMIT 1"  # C1
LOAD_SQL = _SELECT + " WHERE task_id = :task_id AND iteration = :iteration"
# Pages: see _paging. A task's checkpoints are ordered by iteration, unique per task;
# the others by time, the rowid (last column of every index) breaking ties without a sort.
LIST_SQL = {
    "task_id": _SELECT + " WHERE task_id = :task_id AND iteration > :start ORDER BY iteration LIMIT :limit",
    "session_id": _SELECT + " WHERE session_id = :session_id AND " + _paging.ascending("created_at")
    + " ORDER BY created_at, rowid LIMIT :limit",  # C2
    "created": _SELECT + " WHERE " + _paging.ascending("created_at")
    + " AND created_at < :until ORDER BY created_at, rowid LIMIT :limit",  # C3
}
_ROWID_SQL = "SELECT rowid FROM checkpoints WHERE task_id = :task_id AND iteration = :iteration"

_INSERT = (
    "INSERT INTO checkpoints (task_id, iteration, state, created_at, session_id)"
    " VALUES (:task_id, :iteration, :state, :created_at, :session_id)"
    " RETURNING " + ", ".join(COLUMNS)
)
# The subquery finds the newest iteration beyond the `keep_last` to keep (NULL,
# and so no deletion, when there are not that many): it and every older one go.
_PRUNE = (
    "DELETE FROM checkpoints WHERE task_id = :task_id AND iteration <= ("
    "SELECT iteration FROM checkpoints WHERE task_id = :task_id"
    " ORDER BY iteration DESC LIMIT 1 OFFSET :keep_last)"
    " RETURNING iteration"
)


def save(
    conn: sqlite3.Connection,
    task_id: str,
    iteration: int,
    state: Any,
    *,
    session_id: str | None = None,
) -> dict[str, Any]:
    """Store `state` (any JSON value) as the task's checkpoint for `iteration` and return it.

    :raises UniqueError: when the task already has a checkpoint for that iteration.
    :raises ForeignKeyError: when the task or the session does not exist.
    """
    _values.require_text(task_id, TABLE, "task_id")
    _values.require_int(iteration, TABLE, "iteration", 0)
    _values.require_text(session_id, TABLE, "session_id", optional=True)
    params = {
        "task_id": task_id,
        "iteration": iteration,
        "state": _values.to_json(state, TABLE, "state"),
        "created_at": _values.now(),
        "session_id": session_id,
    }
    return write(conn, TABLE, _INSERT, params, decode_row)[0]


def load(conn: sqlite3.Connection, task_id: str, iteration: int | None = None) -> dict[str, Any]:
    """Return the task's checkpoint for `iteration`, or its latest one when `iteration` is None.

    :raises NotFoundError: when there is no such checkpoint.
    """
    _values.require_text(task_id, TABLE, "task_id")
    if iteration is None:
        checkpoint = one(conn, TABLE, LOAD_LATEST_SQL, {"task_id": task_id}, decode_row)
        missing = f"no checkpoint for task {short_repr(task_id)}"
    else:
        _values.require_int(iteration, TABLE, "iteration", 0)
        checkpoint = one(conn, TABLE, LOAD_SQL, {"task_id": task_id, "iteration": iteration}, decode_row)
        missing = f"no checkpoint for task {short_repr(task_id)} at iteration {iteration}"
    if checkpoint is None:
        raise NotFoundError(f"{TABLE}: {missing}")
    return checkpoint


def list(  # noqa: A001 - the module's API reads checkpoints.list(conn, ...)
    conn: sqlite3.Connection,
    *,
    task_id: str | None = None,
    session_id: str | None = None,
    created_since: Any = None,
    created_until: Any = None,
    limit: int = _paging.DEFAULT_LIMIT,
    after: dict[str, Any] | None = None,
) -> builtins.list[dict[str, Any]]:
    """Return at most `limit` checkpoints of one task, of one session, or created in a time range.

    Exactly one of `task_id`, `session_id` or the range [`created_since`,
    `created_until`) (either end may be open) must be given. A task's checkpoints
    come by iteration, the others oldest first. `after` is the last checkpoint of
    the previous page.
    """
    group, params = _values.list_filter(TABLE, limit, {"task_id": task_id, "session_id": session_id},
                                        "created", created_since, created_until, min_limit=1)
    if group == "task_id":
        params["start"] = _paging.ROWID_MIN if after is None else _paging.anchor(after, TABLE, {"iteration": int})[0]
    else:
        last = None
        if after is not None:
            after_task, iteration, created_at = _paging.anchor(
                after, TABLE, {"task_id": str, "iteration": int, "created_at": str})
            key = {"task_id": after_task, "iteration": iteration}
            last = (created_at, _paging.rowid_of(conn, TABLE, _ROWID_SQL, key))
        _paging.set_start(params, last)
    return rows(conn, TABLE, LIST_SQL[group], params, decode_row)


def prune(conn: sqlite3.Connection, task_id: str, keep_last: int) -> int:
    """Delete all but the task's `keep_last` newest iterations; return how many were deleted.

    A task with no checkpoints (or an unknown task) has nothing to delete: 0.
    """
    _values.require_text(task_id, TABLE, "task_id")
    _values.require_int(keep_last, TABLE, "keep_last", 0)
    return len(write(conn, TABLE, _PRUNE, {"task_id": task_id, "keep_last": keep_last}))


# Tasks holding more than :keep_last checkpoints, read from idx_checkpoints_task_id_iteration alone.
CROWDED_SQL = "SELECT task_id FROM checkpoints GROUP BY task_id HAVING count(*) > :keep_last"


def prune_all(conn: sqlite3.Connection, keep_last: int) -> int:
    """Delete all but the `keep_last` highest iterations of every task; return how many were deleted.

    Each task's checkpoints go in a write transaction of their own (unless the
    caller's transaction holds them all), so other writers wait behind one task
    at most; tasks pruned before a failure stay pruned.
    """
    _values.require_int(keep_last, TABLE, "keep_last", 0)
    crowded = [task_id for (task_id,) in rows(conn, TABLE, CROWDED_SQL, {"keep_last": keep_last})]
    deleted = sum(prune(conn, task_id, keep_last) for task_id in crowded)
    logging.getLogger("abathur_db").info("%s: pruned %d checkpoint(s) of %d task(s), keeping the last %d of each",
                                         TABLE, deleted, len(crowded), keep_last)
    return deleted
