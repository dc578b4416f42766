"""Tasks and the task queue: create, read, list, claim, and the status changes of a task's life."""

from __future__ import annotations

import builtins
import inspect
import logging
import sqlite3
from typing import Any, Iterable

from . import _values, sessions
from .errors import ForeignKeyError, NotFoundError, TransitionError, ValidationError, short_repr
from .transaction import one, rows, transaction, write

TABLE = "tasks"
STATUSES = ("pending", "running", "completed", "failed", "cancelled")
COLUMNS = (
    "id", "prompt", "agent_type", "priority", "status", "input_data", "result_data", "error_message",
    "retry_count", "max_retries", "max_execution_timeout_seconds", "submitted_at", "started_at",
    "completed_at", "last_updated_at", "created_by", "parent_task_id", "dependencies", "session_id",
    "unmet_dependencies",
)
JSON_COLUMNS = ("input_data", "result_data", "dependencies")
decode_row = _values.decoder(TABLE, COLUMNS, JSON_COLUMNS)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM tasks"
_RETURNING = " RETURNING " + ", ".join(COLUMNS)


GET_SQL = _SELECT + " WHERE id = :id"  # catalog T1
GET_WITH_SESSION_SQL = (  # catalog T8
    f"SELECT {', '.join('t.' + c for c in COLUMNS)}, {', '.join('s.' + c for c in sessions.COLUMNS)}"
    " FROM tasks AS t LEFT JOIN sessions AS s ON s.id = t.session_id WHERE t.id = :id"
)
LIST_SQL = {
    "status": _SELECT + " WHERE status = :status ORDER BY priority DESC, submitted_at LIMIT :limit",  # T3
    "session_id": _SELECT + " WHERE session_id = :session_id ORDER BY submitted_at DESC LIMIT :limit",  # T4
    "parent_task_id": _SELECT + " WHERE parent_task_id = :parent_task_id ORDER BY submitted_at LIMIT :limit",  # T6
    "submitted": _SELECT  # T5: [since, until)
    + " WHERE submitted_at >= :since AND submitted_at < :until ORDER BY submitted_at LIMIT :limit",
}

# Catalog T2. Without ANALYZE statistics the planner prefers idx_tasks_status_priority
# and would step over every blocked pending task; INDEXED BY pins the partial index,
# which holds only claimable tasks. SQLite uses a partial index only when the WHERE
# repeats its terms literally (an IN (...) or a bound value would not match).
_CLAIM = (
    "UPDATE tasks SET status = 'running', started_at = :now, last_updated_at = :now"
    " WHERE rowid = (SELECT rowid FROM tasks INDEXED BY idx_tasks_claimable"
    " WHERE status = 'pending' AND unmet_dependencies = 0{agent_type}"
    " ORDER BY priority DESC, submitted_at LIMIT 1)" + _RETURNING
)
CLAIM_SQL = _CLAIM.format(agent_type="")
CLAIM_BY_AGENT_TYPE_SQL = _CLAIM.format(agent_type=" AND agent_type = :agent_type")

# Catalog T7. A running task is stale once its deadline (last update + its own
# timeout) has passed; idx_tasks_running_deadline indexes that very expression for
# running tasks, so only stale ones are read (the WHERE must repeat it exactly, and
# INDEXED BY keeps the planner from preferring idx_tasks_status_priority). All SET
# expressions read the row as it was, so each CASE tests the old retry_count.
REQUEUE_STALE_SQL = (
    "UPDATE tasks INDEXED BY idx_tasks_running_deadline SET"
    " status = CASE WHEN retry_count < max_retries THEN 'pending' ELSE 'failed' END,"
    " retry_count = CASE WHEN retry_count < max_retries THEN retry_count + 1 ELSE retry_count END,"
    " started_at = CASE WHEN retry_count < max_retries THEN NULL ELSE started_at END,"
    " completed_at = CASE WHEN retry_count < max_retries THEN NULL ELSE :now END,"
    " error_message = CASE WHEN retry_count < max_retries THEN error_message"
    " ELSE 'timed out after ' || max_execution_timeout_seconds || ' s without an update; '"
    " || retry_count || ' of ' || max_retries || ' retries used' END,"
    " last_updated_at = :now"
    " WHERE status = 'running' AND strftime('%Y-%m-%dT%H:%M:%fZ', last_updated_at,"
    " '+' || max_execution_timeout_seconds || ' seconds') < :now"
    + _RETURNING
)

# What a refused status change is explained by (a whole row might not even decode).
_STATUS_SQL = "SELECT status, retry_count, max_retries FROM tasks WHERE id = :id"

INSERT_SQL = (
    "INSERT INTO tasks (id, prompt, agent_type, priority, input_data, max_retries,"
    " max_execution_timeout_seconds, submitted_at, last_updated_at, created_by, parent_task_id,"
    " dependencies, session_id)"
    " VALUES (:id, :prompt, :agent_type, :priority, :input_data, :max_retries,"
    " :max_execution_timeout_seconds, :submitted_at, :now, :created_by, :parent_task_id,"
    " :dependencies, :session_id)"
)
_MISSING_DEPENDENCIES = "SELECT value FROM json_each(:dependencies) WHERE value NOT IN (SELECT id FROM tasks)"

# Each status change is one guarded UPDATE: (statement, statuses it may start from).
_COMPLETE = (
    "UPDATE tasks SET status = 'completed', result_data = :result_data, completed_at = :now,"
    " last_updated_at = :now WHERE id = :id AND status = 'running'" + _RETURNING,
    ("running",),
)
_FAIL = (
    "UPDATE tasks SET status = 'failed', error_message = :error_message, completed_at = :now,"
    " last_updated_at = :now WHERE id = :id AND status = 'running'" + _RETURNING,
    ("running",),
)
_CANCEL = (
    "UPDATE tasks SET status = 'cancelled', completed_at = :now, last_updated_at = :now"
    " WHERE id = :id AND status IN ('pending', 'running')" + _RETURNING,
    ("pending", "running"),
)
_RETRY = (
    "UPDATE tasks SET status = 'pending', retry_count = retry_count + 1, started_at = NULL,"
    " completed_at = NULL, last_updated_at = :now"
    " WHERE id = :id AND status = 'failed' AND retry_count < max_retries" + _RETURNING,
    ("failed",),
)
_HEARTBEAT = (
    "UPDATE tasks SET last_updated_at = :now WHERE id = :id AND status = 'running'" + _RETURNING,
    ("running",),
)


def create(
    conn: sqlite3.Connection,
    prompt: str,
    *,
    task_id: str | None = None,
    agent_type: str = "general",
    priority: int = 5,
    input_data: Any = None,
    session_id: str | None = None,
    parent_task_id: str | None = None,
    dependencies: builtins.list[str] | tuple[str, ...] = (),
    max_retries: int = 3,
    max_execution_timeout_seconds: int = 3600,
    created_by: str | None = None,
    submitted_at: Any = None,
) -> dict[str, Any]:
    """Insert a pending task (its id generated unless given) and return it.

    `priority` runs from 0 to 10, higher first. The task can be claimed once every
    task in `dependencies` is completed. `submitted_at` (an aware datetime or ISO
    string, default now) sets its place among tasks of equal priority.

    :raises ForeignKeyError: when a dependency, the session or the parent does not exist.
    """
    params = _insert_params(
        _values.now(), prompt, task_id=task_id, agent_type=agent_type, priority=priority,
        input_data=input_data, session_id=session_id, parent_task_id=parent_task_id,
        dependencies=dependencies, max_retries=max_retries,
        max_execution_timeout_seconds=max_execution_timeout_seconds, created_by=created_by,
        submitted_at=submitted_at,
    )
    if params["dependencies"] == "[]":
        return write(conn, TABLE, INSERT_SQL + _RETURNING, params, decode_row)[0]
    with transaction(conn):
        _insert_with_dependencies(conn, params)
        # RETURNING would show the row before the AFTER INSERT trigger counted unmet_dependencies.
        return one(conn, TABLE, GET_SQL, params, decode_row)


def create_many(conn: sqlite3.Connection, new_tasks: Iterable[dict[str, Any]]) -> builtins.list[str]:
    """Insert many pending tasks in one transaction and return their ids, in order.

    Each item holds create()'s arguments by name (``prompt`` included). A task may
    depend on one created earlier in the same call. Nothing is stored unless every
    task is: the first bad one raises, as create() would.
    """
    now = _values.now()
    prepared = []
    if isinstance(new_tasks, (str, bytes, dict)) or not hasattr(new_tasks, "__iter__"):
        raise ValidationError(f"{TABLE}: create_many() takes an iterable of dicts, got {short_repr(new_tasks)}")
    for number, fields in enumerate(new_tasks):
        if not isinstance(fields, dict) or "prompt" not in fields or not _CREATE_FIELDS.issuperset(fields):
            raise ValidationError(
                f"{TABLE}: create_many() item {number} must be a dict with prompt and create()'s keyword"
                f" arguments, got {short_repr(fields)}"
            )
        prepared.append(_insert_params(now, **fields))
    with transaction(conn):
        for params in prepared:
            if params["dependencies"] == "[]":
                write(conn, TABLE, INSERT_SQL, params)
            else:
                _insert_with_dependencies(conn, params)
    return [params["id"] for params in prepared]


def _insert_params(
    now: str,
    prompt: str,
    *,
    task_id: str | None = None,
    agent_type: str = "general",
    priority: int = 5,
    input_data: Any = None,
    session_id: str | None = None,
    parent_task_id: str | None = None,
    dependencies: builtins.list[str] | tuple[str, ...] = (),
    max_retries: int = 3,
    max_execution_timeout_seconds: int = 3600,
    created_by: str | None = None,
    submitted_at: Any = None,
) -> dict[str, Any]:
    """Check create()'s arguments and return the INSERT's parameters."""
    _values.require_text(prompt, TABLE, "prompt")
    _values.require_text(task_id, TABLE, "id", optional=True)
    _values.require_text(agent_type, TABLE, "agent_type")
    _values.require_int(priority, TABLE, "priority", 0, 10)
    _values.require_int(max_retries, TABLE, "max_retries", 0)
    _values.require_int(max_execution_timeout_seconds, TABLE, "max_execution_timeout_seconds", 1)
    for field, value in (("session_id", session_id), ("parent_task_id", parent_task_id),
                         ("created_by", created_by)):
        _values.require_text(value, TABLE, field, optional=True)
    task_id = task_id or _values.new_id()
    # Keys are column names: errors.translate finds the missing parent of a foreign key by them.
    return {
        "id": task_id,
        "prompt": prompt,
        "agent_type": agent_type,
        "priority": priority,
        "input_data": "{}" if input_data is None else _values.to_json(input_data, TABLE, "input_data"),
        "max_retries": max_retries,
        "max_execution_timeout_seconds": max_execution_timeout_seconds,
        "submitted_at": now if submitted_at is None else _values.timestamp(submitted_at, TABLE, "submitted_at"),
        "now": now,
        "created_by": created_by,
        "parent_task_id": parent_task_id,
        "dependencies": "[]" if not dependencies and isinstance(dependencies, (builtins.list, tuple))
        else _dependencies_json(dependencies, task_id),
        "session_id": session_id,
    }


_CREATE_FIELDS = frozenset(inspect.signature(_insert_params).parameters) - {"now"}


def _insert_with_dependencies(conn: sqlite3.Connection, params: dict[str, Any]) -> None:
    """Insert one task that has dependencies, naming any that does not exist (inside a transaction)."""
    missing = [value for (value,) in rows(conn, TABLE, _MISSING_DEPENDENCIES, params)]
    if missing:
        raise ForeignKeyError(
            f"{TABLE}: {TABLE}.dependencies: no task with id {', '.join(map(short_repr, missing))}"
        )
    write(conn, TABLE, INSERT_SQL, params)


def _dependencies_json(dependencies: Any, task_id: str) -> str:
    if not isinstance(dependencies, (builtins.list, tuple)):
        raise ValidationError(
            f"{TABLE}.dependencies: expected a list of task ids, got {short_repr(dependencies)}"
        )
    for dependency in dependencies:
        _values.require_text(dependency, TABLE, "dependencies")
    if len(set(dependencies)) != len(dependencies):
        raise ValidationError(f"{TABLE}.dependencies: {short_repr(dependencies)} lists a task twice")
    if task_id in dependencies:
        raise ValidationError(f"{TABLE}.dependencies: task {task_id!r} cannot depend on itself")
    return _values.to_json(dependencies, TABLE, "dependencies", builtins.list)


def get(conn: sqlite3.Connection, task_id: str) -> dict[str, Any]:
    """Return the task `task_id`; raise NotFoundError if there is none."""
    _values.require_text(task_id, TABLE, "id")
    task = one(conn, TABLE, GET_SQL, {"id": task_id}, decode_row)
    if task is None:
        raise NotFoundError(f"{TABLE}: no task with id {short_repr(task_id)}")
    return task


def get_with_session(conn: sqlite3.Connection, task_id: str) -> dict[str, Any]:
    """Return the task `task_id` with its session (or None) under the key ``"session"``."""
    _values.require_text(task_id, TABLE, "id")
    task = one(conn, TABLE, GET_WITH_SESSION_SQL, {"id": task_id}, _decode_with_session)
    if task is None:
        raise NotFoundError(f"{TABLE}: no task with id {short_repr(task_id)}")
    return task


def _decode_with_session(row: tuple) -> dict[str, Any]:
    task = decode_row(row[:len(COLUMNS)])
    session = row[len(COLUMNS):]
    task["session"] = None if session[0] is None else sessions.decode_row(session)
    return task


def list(  # noqa: A001 - the module's namespace makes it tasks.list
    conn: sqlite3.Connection,
    *,
    status: str | None = None,
    session_id: str | None = None,
    parent_task_id: str | None = None,
    submitted_since: Any = None,
    submitted_until: Any = None,
    limit: int = 100,
) -> builtins.list[dict[str, Any]]:
    """Return up to `limit` tasks selected by exactly one filter.

    By `status`: most urgent first (priority, then oldest). By `session_id`: newest
    first. By `parent_task_id`: oldest first. By submission time in
    [`submitted_since`, `submitted_until`) (either end may be open): oldest first.
    """
    group, params = _values.list_filter(
        TABLE, limit, {"status": status, "session_id": session_id, "parent_task_id": parent_task_id},
        "submitted", submitted_since, submitted_until, min_limit=1,
    )
    if group == "status":
        _values.require_choice(status, STATUSES, TABLE, "status")
    return rows(conn, TABLE, LIST_SQL[group], params, decode_row)


def claim_next(conn: sqlite3.Connection, *, agent_type: str | None = None) -> dict[str, Any] | None:
    """Move the most urgent claimable task to ``running`` and return it, or None if there is none.

    Claimable: ``pending`` with every dependency completed (and of `agent_type`, if
    given). Most urgent: highest priority, then oldest ``submitted_at``. One UPDATE
    under the write lock, so no two workers ever get the same task.
    """
    params: dict[str, Any] = {"now": _values.now()}
    if agent_type is None:
        sql = CLAIM_SQL
    else:
        _values.require_text(agent_type, TABLE, "agent_type")
        sql, params["agent_type"] = CLAIM_BY_AGENT_TYPE_SQL, agent_type
    claimed = write(conn, TABLE, sql, params, decode_row)
    return claimed[0] if claimed else None


def complete(conn: sqlite3.Connection, task_id: str, result: Any = None) -> dict[str, Any]:
    """Mark the running task completed with `result` (any JSON value; None stores NULL) and return it.

    Tasks that wait on it become claimable once their other dependencies are completed too.
    """
    result_data = None if result is None else _values.to_json(result, TABLE, "result_data")
    return _transition(conn, "complete", _COMPLETE, {"id": task_id, "result_data": result_data})


def fail(conn: sqlite3.Connection, task_id: str, error_message: str) -> dict[str, Any]:
    """Mark the running task failed with `error_message` and return it."""
    _values.require_text(error_message, TABLE, "error_message")
    return _transition(conn, "fail", _FAIL, {"id": task_id, "error_message": error_message})


def cancel(conn: sqlite3.Connection, task_id: str) -> dict[str, Any]:
    """Cancel the pending or running task and return it."""
    return _transition(conn, "cancel", _CANCEL, {"id": task_id})


def retry(conn: sqlite3.Connection, task_id: str) -> dict[str, Any]:
    """Put the failed task back to ``pending`` (``retry_count`` + 1) and return it.

    :raises TransitionError: when the task is not failed or its retries are used up.
    """
    return _transition(conn, "retry", _RETRY, {"id": task_id})


def heartbeat(conn: sqlite3.Connection, task_id: str) -> dict[str, Any]:
    """Record that the running task is still being worked on, so requeue_stale leaves it alone."""
    return _transition(conn, "heartbeat", _HEARTBEAT, {"id": task_id})


def requeue_stale(conn: sqlite3.Connection, now: Any = None) -> builtins.list[dict[str, Any]]:
    """Return running tasks not updated for longer than their timeout to the queue; return them.

    Each goes back to ``pending`` with ``retry_count`` + 1 while retries remain, else
    to ``failed`` with a message saying so. `now` (an aware datetime or ISO string,
    default the current time) is the moment to measure from.
    """
    moment = _values.now() if now is None else _values.timestamp(now, TABLE, "now")
    requeued = write(conn, TABLE, REQUEUE_STALE_SQL, {"now": moment}, decode_row)
    if requeued:
        failed = sum(task["status"] == "failed" for task in requeued)
        logging.getLogger("abathur_db").info("requeue_stale: %d stale task(s) back to pending, %d failed with "
                                             "no retries left", len(requeued) - failed, failed)
    return requeued


def _transition(conn: sqlite3.Connection, operation: str, change: tuple[str, tuple[str, ...]],
                params: dict[str, Any]) -> dict[str, Any]:
    sql, allowed = change
    _values.require_text(params["id"], TABLE, "id")
    params["now"] = _values.now()
    # The refusal is explained inside the same transaction, so it reports the status that refused.
    with transaction(conn):
        changed = write(conn, TABLE, sql, params, decode_row)
        if not changed:
            task = one(conn, TABLE, _STATUS_SQL, params)
            if task is None:
                raise NotFoundError(f"{TABLE}: no task with id {short_repr(params['id'])}")
            status, retry_count, max_retries = task
            if status not in allowed:
                raise TransitionError(
                    f"{TABLE}: cannot {operation} task {params['id']!r}: its status is"
                    f" {status!r}, must be {' or '.join(map(repr, allowed))}"
                )
            raise TransitionError(
                f"{TABLE}: cannot {operation} task {params['id']!r}: retries are used up"
                f" ({retry_count} of {max_retries})"
            )
    return changed[0]
