"""Tasks and the task queue: create, read, list, claim, and the status changes of a task's life.

The worker contract: every claim starts a run with its own lease (an opaque token,
``task["lease"]``), which the owner's calls (heartbeat, complete, fail, release)
must carry; a call whose lease is not the current one raises LeaseLostError and
changes nothing. A dependency that can no longer complete cancels the tasks that
wait on it, so no task waits forever.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import inspect
import logging
import os
import re
import sqlite3
import time
from typing import Any, Callable, Iterable, TypeVar, cast

from . import _combine, _paging, _values, sessions
from .errors import (ConfigurationError, ForeignKeyError, LeaseLostError, NotFoundError, StoredValueError,
                     TransitionError, ValidationError, short_repr)
from .rows import TaskCounts, TaskRow, TaskWithSessionRow
from .transaction import Row, block_depth, commit_signal, in_block, one, rows, transaction, write, write_many

_T = TypeVar("_T")

TABLE = "tasks"
STATUSES = ("pending", "running", "completed", "failed", "cancelled")
COLUMNS = (
    "id", "prompt", "agent_type", "priority", "status", "input_data", "result_data", "error_message",
    "retry_count", "max_retries", "max_execution_timeout_seconds", "submitted_at", "started_at",
    "completed_at", "last_updated_at", "created_by", "parent_task_id", "dependencies", "session_id",
    "unmet_dependencies", "lease",
)
JSON_COLUMNS = ("input_data", "result_data", "dependencies")
decode_row = cast("Callable[[Row], TaskRow]", _values.decoder(TABLE, COLUMNS, JSON_COLUMNS))
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM tasks"
_RETURNING = " RETURNING " + ", ".join(COLUMNS)
# How often a waiting claim_next looks for commits of other processes (PRAGMA data_version).
WAIT_POLL_SECONDS = 0.02
_LEASE = re.compile(r"[0-9a-f]{32}")


GET_SQL = _SELECT + " WHERE id = :id"  # catalog T1
GET_WITH_SESSION_SQL = (  # catalog T8
    f"SELECT {', '.join('t.' + c for c in COLUMNS)}, {', '.join('s.' + c for c in sessions.COLUMNS)}"
    " FROM tasks AS t LEFT JOIN sessions AS s ON s.id = t.session_id WHERE t.id = :id"
)
# Pages: see _paging. The rowid, last column of every index, breaks ties without a sort.
# A status's order mixes directions (priority DESC, submitted_at), so a page after a
# row reads the rest of that row's priority, then the lower ones: each part a search.
LIST_SQL = {
    "status": _SELECT + " WHERE status = :status ORDER BY priority DESC, submitted_at, rowid LIMIT :limit",  # T3
    "status_rest": _SELECT + " WHERE status = :status AND priority = :priority AND "
    + _paging.ascending("submitted_at") + " ORDER BY submitted_at, rowid LIMIT :limit",
    "status_below": _SELECT + " WHERE status = :status AND priority < :priority"
    " ORDER BY priority DESC, submitted_at, rowid LIMIT :limit",
    "session_id": _SELECT + " WHERE session_id = :session_id AND " + _paging.descending("submitted_at")
    + " ORDER BY submitted_at DESC, rowid DESC LIMIT :limit",  # T4
    "parent_task_id": _SELECT + " WHERE parent_task_id = :parent_task_id AND " + _paging.ascending("submitted_at")
    + " ORDER BY submitted_at, rowid LIMIT :limit",  # T6
    "submitted": _SELECT + " WHERE " + _paging.ascending("submitted_at")  # T5: [since, until)
    + " AND submitted_at < :until ORDER BY submitted_at, rowid LIMIT :limit",
}
_ROWID_SQL = "SELECT rowid FROM tasks WHERE id = :id"  # where a page after that task starts

# Each status is a search of idx_tasks_status_priority, counted in the index alone: its
# cost grows with the number of tasks (a count has no shortcut), so it is no catalog query.
COUNTS_SQL = (
    "SELECT status, count(*) FROM tasks WHERE status IN ('pending', 'running', 'completed', 'failed', 'cancelled')"
    " GROUP BY status"
)

# Catalog T2 and T9. Without ANALYZE statistics the planner prefers idx_tasks_status_priority
# and would step over every blocked pending task; INDEXED BY pins the partial index,
# which holds only claimable tasks. SQLite uses a partial index only when the WHERE
# repeats its terms literally (an IN (...) or a bound value would not match).
_CLAIM = (
    "UPDATE tasks SET status = 'running', started_at = :now, last_updated_at = :now, lease = :lease"
    " WHERE rowid = (SELECT rowid FROM tasks INDEXED BY {index}"
    " WHERE status = 'pending' AND unmet_dependencies = 0{agent_type}"
    " ORDER BY priority DESC, submitted_at LIMIT 1)" + _RETURNING
)
CLAIM_SQL = _CLAIM.format(index="idx_tasks_claimable", agent_type="")
CLAIM_BY_AGENT_TYPE_SQL = _CLAIM.format(index="idx_tasks_claimable_by_type", agent_type=" AND agent_type = :agent_type")
# A waiting claim_next looks before it claims: a read takes no write lock, and writes
# no commit that would wake the other waiting workers in turn.
_PEEK = ("SELECT 1 FROM tasks INDEXED BY {index}"
         " WHERE status = 'pending' AND unmet_dependencies = 0{agent_type} LIMIT 1")
PEEK_SQL = _PEEK.format(index="idx_tasks_claimable", agent_type="")
PEEK_BY_AGENT_TYPE_SQL = _PEEK.format(index="idx_tasks_claimable_by_type", agent_type=" AND agent_type = :agent_type")
_DATA_VERSION = "PRAGMA data_version"  # changes when another connection commits

# A running task is stale once its deadline (last update + its own timeout) has passed;
# idx_tasks_running_deadline indexes that very expression for running tasks, so only
# stale ones are read (the WHERE must repeat it exactly, and INDEXED BY keeps the
# planner from preferring idx_tasks_status_priority).
_DEADLINE = "strftime('%Y-%m-%dT%H:%M:%fZ', last_updated_at, '+' || max_execution_timeout_seconds || ' seconds')"
# Catalog T7. All SET expressions read the row as it was, so each CASE tests the old retry_count.
REQUEUE_STALE_SQL = (
    "UPDATE tasks INDEXED BY idx_tasks_running_deadline SET"
    " status = CASE WHEN retry_count < max_retries THEN 'pending' ELSE 'failed' END,"
    " retry_count = CASE WHEN retry_count < max_retries THEN retry_count + 1 ELSE retry_count END,"
    " started_at = CASE WHEN retry_count < max_retries THEN NULL ELSE started_at END,"
    " completed_at = CASE WHEN retry_count < max_retries THEN NULL ELSE :now END,"
    " error_message = CASE WHEN retry_count < max_retries THEN error_message"
    " ELSE 'timed out after ' || max_execution_timeout_seconds || ' s without an update; '"
    " || retry_count || ' of ' || max_retries || ' retries used' END,"
    " last_updated_at = :now, lease = NULL"
    f" WHERE status = 'running' AND {_DEADLINE} < :now"
    + _RETURNING
)
# Catalog T10: the same stale tasks, read only, earliest deadline first.
STALE_SQL = (
    _SELECT + f" INDEXED BY idx_tasks_running_deadline WHERE status = 'running' AND {_DEADLINE} < :now AND "
    + _paging.ascending(_DEADLINE) + f" ORDER BY {_DEADLINE}, rowid LIMIT :limit"
)

# What a refused status change is explained by (a whole row might not even decode).
_REFUSAL_SQL = (
    "SELECT status, retry_count, max_retries, lease, started_at, completed_at, last_updated_at, error_message"
    " FROM tasks WHERE id = :id"
)

INSERT_SQL = (
    "INSERT INTO tasks (id, prompt, agent_type, priority, input_data, max_retries,"
    " max_execution_timeout_seconds, submitted_at, last_updated_at, created_by, parent_task_id,"
    " dependencies, session_id)"
    " VALUES (:id, :prompt, :agent_type, :priority, :input_data, :max_retries,"
    " :max_execution_timeout_seconds, :submitted_at, :now, :created_by, :parent_task_id,"
    " :dependencies, :session_id)"
)
# A new task's dependencies that do not exist (no status), or can never complete.
_UNUSABLE_DEPENDENCIES = (
    "SELECT d.value, t.status FROM json_each(:dependencies) AS d LEFT JOIN tasks AS t ON t.id = d.value"
    " WHERE t.id IS NULL OR t.status = 'cancelled' OR (t.status = 'failed' AND t.retry_count >= t.max_retries)"
)

# Each status change is one guarded UPDATE: (statement, statuses it may start from).
# The owner's changes match the task's current lease too, and every way out of
# running clears it.
_COMPLETE = (
    "UPDATE tasks SET status = 'completed', result_data = :result_data, completed_at = :now,"
    " last_updated_at = :now, lease = NULL WHERE id = :id AND lease = :lease AND status = 'running'",
    ("running",),
)
_FAIL = (
    "UPDATE tasks SET status = 'failed', error_message = :error_message, completed_at = :now,"
    " last_updated_at = :now, lease = NULL WHERE id = :id AND lease = :lease AND status = 'running'" + _RETURNING,
    ("running",),
)
_RELEASE = (
    "UPDATE tasks SET status = 'pending', started_at = NULL, last_updated_at = :now, lease = NULL"
    " WHERE id = :id AND lease = :lease AND status = 'running'" + _RETURNING,
    ("running",),
)
_HEARTBEAT = (
    "UPDATE tasks SET last_updated_at = :now WHERE id = :id AND lease = :lease AND status = 'running'" + _RETURNING,
    ("running",),
)
_CANCEL = (
    "UPDATE tasks SET status = 'cancelled', completed_at = :now, last_updated_at = :now, lease = NULL"
    " WHERE id = :id AND status IN ('pending', 'running')" + _RETURNING,
    ("pending", "running"),
)
_RETRY = (
    "UPDATE tasks SET status = 'pending', retry_count = retry_count + 1, started_at = NULL,"
    " completed_at = NULL, last_updated_at = :now"
    " WHERE id = :id AND status = 'failed' AND retry_count < max_retries" + _RETURNING,
    ("failed",),
)
# A task one of whose stored values cannot be decoded (see StoredValueError) is failed instead of
# claimed or requeued, naming the value: rolled back, it would stop every claim or requeue.
_FAIL_UNREADABLE_SQL = (
    "UPDATE tasks SET status = 'failed', error_message = :error_message, completed_at = :now,"
    " last_updated_at = :now, lease = NULL WHERE id = :id AND status IN ('pending', 'running') RETURNING id"
)
# complete() returns the completed task; complete_and_claim() only needs to know it changed.
COMPLETE_SQL = _COMPLETE[0] + _RETURNING
COMPLETE_ID_SQL = _COMPLETE[0] + " RETURNING id"

# No dead ends: the pending tasks that wait, directly or through others, on task :id,
# which can no longer complete, are cancelled, each naming the dependency it waited
# on. The recursion follows task_dependencies' key; SQLite materialises the whole
# set before the UPDATE changes a row (MATERIALIZE in its plan).
CANCEL_DEPENDENTS_SQL = """
WITH RECURSIVE doomed (id, cause) AS (
    SELECT d.task_id, d.depends_on_task_id
      FROM task_dependencies AS d JOIN tasks AS t ON t.id = d.task_id
     WHERE d.depends_on_task_id = :id AND +t.status = 'pending'
    UNION
    SELECT d.task_id, d.depends_on_task_id
      FROM doomed JOIN task_dependencies AS d ON d.depends_on_task_id = doomed.id
                  JOIN tasks AS t ON t.id = d.task_id
     WHERE +t.status = 'pending'
)
UPDATE tasks
   SET status = 'cancelled', completed_at = :now, last_updated_at = :now, lease = NULL,
       error_message = 'cancelled because dependency ' || quote(blamed.cause)
           || CASE WHEN blamed.cause = :id THEN :how ELSE ' was cancelled' END
  FROM (SELECT id, CASE WHEN max(cause = :id) THEN :id ELSE min(cause) END AS cause  -- one cause a task
          FROM doomed GROUP BY id) AS blamed
 WHERE tasks.id = blamed.id AND tasks.status = 'pending'
""".strip()
_CANCELLED_HOW = " was cancelled"
_FAILED_HOW = " failed with no retries left"
_UNREADABLE_HOW = " failed: one of its stored values breaks today's rules"


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
) -> TaskRow:
    """Insert a pending task (its id generated unless given) and return it.

    `priority` runs from 0 to 10, higher first. The task can be claimed once every
    task in `dependencies` is completed. `submitted_at` (an aware datetime or ISO
    string, default now) sets its place among tasks of equal priority.

    :raises ForeignKeyError: when a dependency, the session or the parent does not exist.
    :raises ValidationError: when a dependency was cancelled or failed with no retries left.
    """
    params = _insert_params(_values.now(), locals())
    if params["dependencies"] == "[]":
        _combine.write(conn, TABLE, INSERT_SQL, params)
        return _inserted(params)

    def insert(c: sqlite3.Connection) -> TaskRow:
        _insert_with_dependencies(c, params)
        # RETURNING would show the row before the AFTER INSERT trigger counted unmet_dependencies.
        return cast(TaskRow, one(c, TABLE, GET_SQL, params, decode_row))  # inserted just above

    return _combine.run(conn, insert)


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
        prepared.append(_insert_params(now, {**_CREATE_DEFAULTS, **fields}))
    with transaction(conn):
        plain: builtins.list[dict[str, Any]] = []  # tasks without dependencies, inserted together
        for params in prepared:
            if params["dependencies"] == "[]":
                plain.append(params)
                continue
            if plain:  # inserted first: a task may depend on them
                write_many(conn, TABLE, INSERT_SQL, plain)
                plain = []
            _insert_with_dependencies(conn, params)
        if plain:
            write_many(conn, TABLE, INSERT_SQL, plain)
    return [params["id"] for params in prepared]


def _insert_params(now: str, given: dict[str, Any]) -> dict[str, Any]:
    """Check create()'s arguments, `given` by name, and return the INSERT's parameters.

    Keys are column names: errors.translate finds the missing parent of a foreign key by them.
    """
    params = {field: given[field] for field in _STORED_AS_GIVEN}
    _values.require_text(params["prompt"], TABLE, "prompt")
    _values.require_text(params["agent_type"], TABLE, "agent_type")
    _values.require_int(params["priority"], TABLE, "priority", 0, 10)
    _values.require_int(params["max_retries"], TABLE, "max_retries", 0)
    _values.require_int(params["max_execution_timeout_seconds"], TABLE, "max_execution_timeout_seconds", 1)
    # The optional ones are mostly left out: a test of None each is the cheapest way past them.
    for field in ("session_id", "parent_task_id", "created_by"):
        if params[field] is not None:
            _values.require_text(params[field], TABLE, field)
    task_id, input_data, dependencies = given["task_id"], given["input_data"], given["dependencies"]
    if task_id is None:
        task_id = _values.new_id()
    else:
        _values.require_text(task_id, TABLE, "id")
    params["id"], params["now"] = task_id, now
    params["input_data"] = "{}" if input_data is None else _values.to_json(input_data, TABLE, "input_data")
    params["submitted_at"] = (now if given["submitted_at"] is None
                              else _values.timestamp(given["submitted_at"], TABLE, "submitted_at"))
    params["dependencies"] = ("[]" if not dependencies and isinstance(dependencies, (builtins.list, tuple))
                              else _dependencies_json(dependencies, task_id))
    return params


_STORED_AS_GIVEN = ("prompt", "agent_type", "priority", "max_retries", "max_execution_timeout_seconds",
                    "session_id", "parent_task_id", "created_by")
# create_many()'s items: create()'s arguments by name, the omitted ones at create()'s defaults.
_CREATE_FIELDS = frozenset(inspect.signature(create).parameters) - {"conn"}
_CREATE_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(create).parameters.items()
                    if parameter.default is not parameter.empty}


def _inserted(params: dict[str, Any]) -> TaskRow:
    """Return the task a plain INSERT_SQL with `params` stored (no dependencies), as get() would read it.

    Built from the parameters and the columns' defaults: reading it back (RETURNING)
    costs a put about a tenth of its time.
    """
    return decode_row((
        params["id"], params["prompt"], params["agent_type"], params["priority"], "pending", params["input_data"],
        None, None, 0, params["max_retries"], params["max_execution_timeout_seconds"], params["submitted_at"],
        None, None, params["now"], params["created_by"], params["parent_task_id"], "[]", params["session_id"],
        0, None,
    ))


def _insert_with_dependencies(conn: sqlite3.Connection, params: dict[str, Any]) -> None:
    """Insert one task that has dependencies, naming any that does not exist or can never complete.

    Runs inside the caller's transaction: no dependency can change in between.
    """
    unusable = rows(conn, TABLE, _UNUSABLE_DEPENDENCIES, params)
    missing = [value for value, status in unusable if status is None]
    if missing:
        raise ForeignKeyError(
            f"{TABLE}: {TABLE}.dependencies: no task with id {', '.join(map(short_repr, missing))}"
        )
    if unusable:
        ended = "; ".join(f"task {short_repr(value)} " + ("was cancelled" if status == "cancelled" else
                                                           "failed with no retries left") for value, status in unusable)
        raise ValidationError(f"{TABLE}.dependencies: {ended}: a task waiting on it could never run")
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


def get(conn: sqlite3.Connection, task_id: str) -> TaskRow:
    """Return the task `task_id`; raise NotFoundError if there is none."""
    _values.require_text(task_id, TABLE, "id")
    task = one(conn, TABLE, GET_SQL, {"id": task_id}, decode_row)
    if task is None:
        raise NotFoundError(f"{TABLE}: no task with id {short_repr(task_id)}")
    return task


def get_with_session(conn: sqlite3.Connection, task_id: str) -> TaskWithSessionRow:
    """Return the task `task_id` with its session (or None) under the key ``"session"``."""
    _values.require_text(task_id, TABLE, "id")
    task = one(conn, TABLE, GET_WITH_SESSION_SQL, {"id": task_id}, _decode_with_session)
    if task is None:
        raise NotFoundError(f"{TABLE}: no task with id {short_repr(task_id)}")
    return task


def _decode_with_session(row: Row) -> TaskWithSessionRow:
    task = cast(TaskWithSessionRow, decode_row(row[:len(COLUMNS)]))  # its "session" is set below
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
    limit: int = _paging.DEFAULT_LIMIT,
    after: TaskRow | None = None,
) -> builtins.list[TaskRow]:
    """Return up to `limit` tasks selected by exactly one filter, the page after the row `after` if given.

    By `status`: most urgent first (priority, then oldest). By `session_id`: newest
    first. By `parent_task_id`: oldest first. By submission time in
    [`submitted_since`, `submitted_until`) (either end may be open): oldest first.
    `after` is the last task of the previous page.
    """
    group, params = _values.list_filter(
        TABLE, limit, {"status": status, "session_id": session_id, "parent_task_id": parent_task_id},
        "submitted", submitted_since, submitted_until, min_limit=1,
    )
    if group == "status":
        _values.require_choice(status, STATUSES, TABLE, "status")
        if after is None:
            return rows(conn, TABLE, LIST_SQL["status"], params, decode_row)
        params["priority"], params["start"], params["start_rowid"] = _anchor(
            conn, after, {"priority": (int, str), "submitted_at": str})
        page = rows(conn, TABLE, LIST_SQL["status_rest"], params, decode_row)
        if len(page) < limit:
            params["limit"] = limit - len(page)
            page += rows(conn, TABLE, LIST_SQL["status_below"], params, decode_row)
        return page
    last = None if after is None else _anchor(conn, after, {"submitted_at": str})
    _paging.set_start(params, last, newest_first=group == "session_id")
    return rows(conn, TABLE, LIST_SQL[group], params, decode_row)


def _anchor(conn: sqlite3.Connection, after: Any, kinds: dict[str, Any]) -> tuple[Any, ...]:
    """Return the values of `kinds` in the task `after` and, last, its rowid: where the next page starts."""
    task_id, *values = _paging.anchor(after, TABLE, {"id": str, **kinds})
    return (*values, _paging.rowid_of(conn, TABLE, _ROWID_SQL, {"id": task_id}))


def counts(conn: sqlite3.Connection) -> TaskCounts:
    """Return how many tasks are in each status, every status included (0 for none)."""
    found = dict(rows(conn, TABLE, COUNTS_SQL))
    return cast(TaskCounts, {status: found.get(status, 0) for status in STATUSES})


def stale(
    conn: sqlite3.Connection,
    now: Any = None,
    *,
    limit: int = _paging.DEFAULT_LIMIT,
    after: TaskRow | None = None,
) -> builtins.list[TaskRow]:
    """Return up to `limit` running tasks that requeue_stale would take back at `now`, changing nothing.

    A running task is stale when it has had no update for longer than its
    ``max_execution_timeout_seconds``. Earliest deadline first; `after` is the last
    task of the previous page. `now` (an aware datetime or ISO string) defaults to
    the current time.
    """
    params = {
        "now": _values.now() if now is None else _values.timestamp(now, TABLE, "now"),
        "limit": _paging.require_limit(limit, TABLE),
        "start": _paging.FIRST,
        "start_rowid": _paging.ROWID_MIN,
    }
    if after is not None:
        last_updated_at, timeout, params["start_rowid"] = _anchor(
            conn, after, {"last_updated_at": str, "max_execution_timeout_seconds": int})
        params["start"] = _deadline(last_updated_at, timeout)
    return rows(conn, TABLE, STALE_SQL, params, decode_row)


def _deadline(last_updated_at: str, seconds: int) -> str:
    """Return the moment a task last updated at `last_updated_at` goes stale, as SQLite's _DEADLINE computes it."""
    moment = _dt.datetime.fromisoformat(_values.timestamp(last_updated_at, TABLE, "after.last_updated_at"))
    try:
        return _values.format_datetime(moment + _dt.timedelta(seconds=seconds))
    except OverflowError:  # such a task is never stale
        raise ValidationError(
            f"{TABLE}.after: max_execution_timeout_seconds {seconds!r} never runs out: no stale task has it"
        ) from None


def claim_next(
    conn: sqlite3.Connection, *, agent_type: str | None = None, wait: float | None = None,
) -> TaskRow | None:
    """Move the most urgent claimable task to ``running`` under a new lease and return it, or None.

    Claimable: ``pending`` with every dependency completed (and of `agent_type`, if
    given). Most urgent: highest priority, then oldest ``submitted_at``. One UPDATE
    under the write lock, so no two workers ever get the same task. The task's
    ``lease`` is what its owner's later calls must carry.

    With `wait` (seconds), wait that long at most for a claimable task, holding no
    lock meanwhile: a commit of this process wakes the wait at once, one of another
    process within WAIT_POLL_SECONDS.

    :raises ConfigurationError: when asked to wait inside a transaction block, whose
        write lock would be held all the while.
    """
    sql, peek, params = _claim_params(agent_type)
    claimed: builtins.list[TaskRow]

    def claim(decode: Callable[[Row], TaskRow]) -> builtins.list[TaskRow]:
        return _combine.write(conn, TABLE, sql, params, decode)

    if not wait:
        if wait is not None:
            _values.require_number(wait, TABLE, "wait")
        claimed = _past_unreadable(conn, claim, "claimed")
        return claimed[0] if claimed else None
    deadline = time.monotonic() + _values.require_number(wait, TABLE, "wait")
    if in_block(conn):
        raise ConfigurationError(
            f"{TABLE}: claim_next(wait={wait!r}) inside a transaction block would hold the write lock while"
            " it waits; wait outside the block"
        )
    with commit_signal(conn) as signal:
        # Each look for a task is preceded by a reading of both counters, so that a
        # commit made while it looks is seen as a change, never lost.
        seen, version = signal.count, one(conn, None, _DATA_VERSION)[0]
        claimed = _past_unreadable(conn, claim, "claimed")
        while not claimed:
            while signal.count == seen and one(conn, None, _DATA_VERSION)[0] == version:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                signal.wait(seen, min(remaining, WAIT_POLL_SECONDS))
            seen, version = signal.count, one(conn, None, _DATA_VERSION)[0]
            if one(conn, TABLE, peek, params) is not None:
                params["now"], params["lease"] = _values.now(), _new_lease()
                claimed = _past_unreadable(conn, claim, "claimed")
    return claimed[0]


def _past_unreadable(conn: sqlite3.Connection, call: Callable[[Callable[[Row], TaskRow]], _T], what: str) -> _T:
    """Return call(decode); fail each task it returns that cannot be decoded (see _FAIL_UNREADABLE_SQL) and call again.

    `what` names the call in the failed task's message. Inside the caller's block the
    error stands: the block's transaction is gone with the call.
    """
    while True:
        try:
            return call(_decode_tagged)
        except StoredValueError as exc:
            task_id = getattr(exc, "task_id", None)
            if task_id is None or block_depth(conn):
                raise
            now = _values.now()
            with transaction(conn):
                if write(conn, TABLE, _FAIL_UNREADABLE_SQL, {"id": task_id, "now": now,
                                                             "error_message": f"not {what}: {exc}"}):
                    _cancel_dependents(conn, task_id, _UNREADABLE_HOW, now)
            logging.getLogger("abathur_db").warning("%s: failed task %r, not %s: %s", TABLE, task_id, what, exc)


def _decode_tagged(row: Row) -> TaskRow:
    """Decode a row; a StoredValueError carries the task's id (the first column) for _past_unreadable."""
    try:
        return decode_row(row)
    except StoredValueError as exc:
        exc.task_id = row[0]  # type: ignore[attr-defined]
        raise


def _claim_params(agent_type: str | None) -> tuple[str, str, dict[str, Any]]:
    """Return a claim's statement, its peek and its parameters (the time and a new lease)."""
    params: dict[str, Any] = {"now": _values.now(), "lease": _new_lease()}
    if agent_type is None:
        return CLAIM_SQL, PEEK_SQL, params
    _values.require_text(agent_type, TABLE, "agent_type")
    params["agent_type"] = agent_type
    return CLAIM_BY_AGENT_TYPE_SQL, PEEK_BY_AGENT_TYPE_SQL, params


def _new_lease() -> str:
    return os.urandom(16).hex()


def complete(conn: sqlite3.Connection, task_id: str, lease: str, result: Any = None) -> TaskRow:
    """Mark the task completed with `result` (any JSON value; None stores NULL) and return it.

    Tasks that wait on it become claimable once their other dependencies are completed too.

    :raises LeaseLostError: when `lease` is not the task's current one; nothing changes.
    """
    params = _owner_params(task_id, lease, "result_data", result)
    return _transition(conn, "complete", (COMPLETE_SQL, _COMPLETE[1]), params)


def complete_and_claim(
    conn: sqlite3.Connection, task_id: str, lease: str, result: Any = None, *, agent_type: str | None = None,
) -> TaskRow | None:
    """Complete the task as complete() does and claim the next one as claim_next() does, in one transaction.

    Return the task claimed (with its own lease), or None when none is claimable;
    the completed task is not returned. One write transaction instead of two: a
    worker that goes straight from one task to the next waits half as often for
    the write lock.

    :raises LeaseLostError: when `lease` is not the task's current one; nothing changes, nothing is claimed.
    """
    params = _owner_params(task_id, lease, "result_data", result)
    sql, _, claim = _claim_params(agent_type)
    params["now"] = claim["now"]

    def complete_then_claim(c: sqlite3.Connection, decode: Callable[[Row], TaskRow]) -> builtins.list[TaskRow]:
        _change(c, "complete", (COMPLETE_ID_SQL, _COMPLETE[1]), params, None)
        return write(c, TABLE, sql, claim, decode)

    claimed = _past_unreadable(conn, lambda decode: _combine.run(conn, lambda c: complete_then_claim(c, decode)),
                               "claimed")
    return claimed[0] if claimed else None


def fail(conn: sqlite3.Connection, task_id: str, lease: str, error_message: str) -> TaskRow:
    """Mark the task failed with `error_message` and return it.

    With no retries left (``retry_count`` = ``max_retries``) the failure is final, and
    the pending tasks waiting on it are cancelled (see cancel()). Otherwise they wait
    for a retry.

    :raises LeaseLostError: when `lease` is not the task's current one; nothing changes.
    """
    _values.require_text(error_message, TABLE, "error_message")
    params = _owner_params(task_id, lease, "error_message", error_message)
    params["now"] = _values.now()

    def fail_then_cancel(c: sqlite3.Connection) -> TaskRow:
        failed: TaskRow = _change(c, "fail", _FAIL, params, decode_row)
        if failed["retry_count"] >= failed["max_retries"]:
            _cancel_dependents(c, failed["id"], _FAILED_HOW, params["now"])
        return failed

    return _combine.run(conn, fail_then_cancel)


def release(conn: sqlite3.Connection, task_id: str, lease: str) -> TaskRow:
    """Hand the task back: ``running`` to ``pending``, no retry used; return it.

    For a worker that stops before finishing (SIGTERM, Ctrl-C): the task keeps its
    place in the queue and the next claim takes it under a new lease.

    :raises LeaseLostError: when `lease` is not the task's current one; nothing changes.
    """
    return _transition(conn, "release", _RELEASE, _owner_params(task_id, lease))


def heartbeat(conn: sqlite3.Connection, task_id: str, lease: str) -> TaskRow:
    """Record that the task is still being worked on, so requeue_stale leaves it alone; return it.

    :raises LeaseLostError: when `lease` is not the task's current one (the work is
        no longer the caller's: stop it); nothing changes.
    """
    return _transition(conn, "heartbeat", _HEARTBEAT, _owner_params(task_id, lease))


def cancel(conn: sqlite3.Connection, task_id: str) -> TaskRow:
    """Cancel the pending or running task (ending its lease, if any) and return it.

    The pending tasks that wait on it, directly or through others, are cancelled too,
    each with the dependency it waited on in ``error_message``.
    """
    _values.require_text(task_id, TABLE, "id")
    params = {"id": task_id}
    with transaction(conn):
        cancelled = _transition(conn, "cancel", _CANCEL, params)
        _cancel_dependents(conn, task_id, _CANCELLED_HOW, params["now"])
    return cancelled


def retry(conn: sqlite3.Connection, task_id: str) -> TaskRow:
    """Put the failed task back to ``pending`` (``retry_count`` + 1) and return it.

    :raises TransitionError: when the task is not failed or its retries are used up.
    """
    _values.require_text(task_id, TABLE, "id")
    return _transition(conn, "retry", _RETRY, {"id": task_id})


def requeue_stale(conn: sqlite3.Connection, now: Any = None) -> builtins.list[TaskRow]:
    """Take back the running tasks not updated for longer than their timeout, ending their leases; return them.

    Each goes back to ``pending`` with ``retry_count`` + 1 while retries remain, else
    to ``failed`` with a message saying so, which cancels the pending tasks waiting
    on it. `now` (an aware datetime or ISO string, default the current time) is the
    moment to measure from.
    """
    moment = _values.now() if now is None else _values.timestamp(now, TABLE, "now")

    def requeue(decode: Callable[[Row], TaskRow]) -> builtins.list[TaskRow]:
        with transaction(conn):
            requeued = write(conn, TABLE, REQUEUE_STALE_SQL, {"now": moment}, decode)
            for task in requeued:
                if task["status"] == "failed":
                    _cancel_dependents(conn, task["id"], _FAILED_HOW, moment)
        return requeued

    requeued = _past_unreadable(conn, requeue, "requeued")
    failed = [task for task in requeued if task["status"] == "failed"]
    if requeued:
        logging.getLogger("abathur_db").info("%s: requeue_stale sent %d stale task(s) back to pending, %d failed"
                                             " with no retries left", TABLE, len(requeued) - len(failed), len(failed))
    return requeued


def _owner_params(task_id: Any, lease: Any, field: str | None = None, value: Any = None) -> dict[str, Any]:
    """Check an owner's call's task id and lease; return its parameters, `field` set to `value` (a result as JSON)."""
    _values.require_text(task_id, TABLE, "id")
    if not isinstance(lease, str) or not _LEASE.fullmatch(lease):
        raise ValidationError(
            f"{TABLE}.lease: expected the lease claim_next returned with the task (32 hexadecimal digits),"
            f" got {short_repr(lease)}"
        )
    params = {"id": task_id, "lease": lease}
    if field == "result_data":
        params[field] = None if value is None else _values.to_json(value, TABLE, "result_data")
    elif field is not None:
        params[field] = value
    return params


def _cancel_dependents(conn: sqlite3.Connection, task_id: str, how: str, now: str) -> None:
    write(conn, TABLE, CANCEL_DEPENDENTS_SQL, {"id": task_id, "how": how, "now": now})


def _transition(conn: sqlite3.Connection, operation: str, change: tuple[str, tuple[str, ...]],
                params: dict[str, Any]) -> TaskRow:
    """Make the status change in a transaction of its own (or the caller's); `params` hold a checked id."""
    params["now"] = _values.now()
    changed: TaskRow = _combine.run(conn, lambda c: _change(c, operation, change, params, decode_row))
    return changed


def _change(conn: sqlite3.Connection, operation: str, change: tuple[str, tuple[str, ...]],
            params: dict[str, Any], decode: Callable[[Row], Any] | None) -> Any:
    """Make the status change inside the caller's transaction block; return its first row (decoded by `decode`).

    The refusal is explained inside the same transaction, so it reports the status that refused.
    """
    sql, allowed = change
    changed = write(conn, TABLE, sql, params, decode)
    if not changed:
        raise _refusal(conn, operation, allowed, params)
    return changed[0]


def _refusal(conn: sqlite3.Connection, operation: str, allowed: tuple[str, ...],
             params: dict[str, Any]) -> TransitionError | NotFoundError:
    """Return why `operation` changed nothing, read from the task as it is."""
    task = one(conn, TABLE, _REFUSAL_SQL, params)
    if task is None:
        return NotFoundError(f"{TABLE}: no task with id {short_repr(params['id'])}")
    status, retry_count, max_retries, lease, started_at, completed_at, last_updated_at, error_message = task
    doing = f"{TABLE}: cannot {operation} task {params['id']!r}"
    if "lease" in params:
        if status == "running":
            why = (f"it has been running under another lease since {started_at}" if lease is not None
                   else "it is running without a lease (claimed before this version)")
        elif status == "pending":
            why = f"it went back to pending at {last_updated_at} (released, requeued as stale, or retried)"
        elif status in ("completed", "cancelled"):
            why = f"it was {status} at {completed_at}"
        elif status == "failed":
            why = f"it failed at {completed_at}: {error_message}"
        else:
            why = f"its status is {status!r}"
        return LeaseLostError(f"{doing} with lease {params['lease']!r}: that lease is no longer the task's: {why}")
    if status not in allowed:
        return TransitionError(f"{doing}: its status is {status!r}, must be {' or '.join(map(repr, allowed))}")
    return TransitionError(f"{doing}: retries are used up ({retry_count} of {max_retries})")


# The oldest pending task: min() reads the pending entries of idx_tasks_status_priority
# alone (an ORDER BY submitted_at would sort them, or walk idx_tasks_submitted_at
# through every finished task); SQLite takes the bare rowid from the row min() chose.
OLDEST_PENDING_SQL = (
    _SELECT + " WHERE rowid = (SELECT rowid FROM (SELECT rowid, min(submitted_at) FROM tasks"
    " WHERE status = 'pending'))"
)


def oldest_pending(conn: sqlite3.Connection) -> TaskRow | None:
    """Return the pending task submitted first, claimable or not, or None when no task is pending.

    Like counts(), it reads every pending entry of one index: its cost grows with
    the number of pending tasks.
    """
    oldest: TaskRow | None = one(conn, TABLE, OLDEST_PENDING_SQL, {}, decode_row)
    return oldest


_FORCE_RELEASE = (
    "UPDATE tasks SET status = 'pending', started_at = NULL, last_updated_at = :now, lease = NULL"
    " WHERE id = :id AND status = 'running'" + _RETURNING,
    ("running",),
)


def force_release(conn: sqlite3.Connection, task_id: str) -> TaskRow:
    """Hand a running task back to ``pending`` whatever its lease, no retry used; return it.

    An operator's release (no lease needed): the run ends, so its worker's later
    calls raise LeaseLostError, and the task keeps its place in the queue.

    :raises TransitionError: when the task is not running.
    """
    _values.require_text(task_id, TABLE, "id")
    released = _transition(conn, "release", _FORCE_RELEASE, {"id": task_id})
    logging.getLogger("abathur_db").info("%s: force_release sent task %r back to pending, its lease ended", TABLE,
                                         task_id)
    return released
