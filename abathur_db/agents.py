"""Agents working on tasks: spawn, get, list, change state, terminate."""

from __future__ import annotations

import builtins
import sqlite3
from typing import Any, Callable, cast

from . import _paging, _values
from .errors import NotFoundError, short_repr
from .rows import AgentRow
from .transaction import Row, one, rows, transaction, write

TABLE = "agents"
STATES = ("spawning", "idle", "busy", "terminating", "terminated")
SPAWN_STATES = ("spawning", "idle", "busy")
COLUMNS = (
    "id", "name", "specialization", "task_id", "state", "model", "spawned_at", "terminated_at",
    "resource_usage", "session_id",
)
JSON_COLUMNS = ("resource_usage",)
decode_row = cast("Callable[[Row], AgentRow]", _values.decoder(TABLE, COLUMNS, JSON_COLUMNS))
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM agents"
_RETURNING = " RETURNING " + ", ".join(COLUMNS)

# Allowed state changes: idle and busy alternate, every live state can wind down,
# and terminated is final.
_NEXT = {
    "spawning": {"idle", "busy", "terminating", "terminated"},
    "idle": {"busy", "terminating", "terminated"},
    "busy": {"idle", "terminating", "terminated"},
    "terminating": {"terminated"},
    "terminated": set(),
}


GET_SQL = _SELECT + " WHERE id = :id"
_STATE_SQL = "SELECT state FROM agents WHERE id = :id"
# Pages: see _paging. The rowid, last column of every index, breaks ties between
# agents spawned in the same millisecond without a sort.
LIST_SQL = {
    "task_id": _SELECT + " WHERE task_id = :task_id AND " + _paging.ascending("spawned_at")
    + " ORDER BY spawned_at, rowid LIMIT :limit",  # A1
    "session_id": _SELECT + " WHERE session_id = :session_id AND " + _paging.descending("spawned_at")
    + " ORDER BY spawned_at DESC, rowid DESC LIMIT :limit",  # A2
    "spawned": _SELECT + " WHERE " + _paging.ascending("spawned_at")
    + " AND spawned_at < :until ORDER BY spawned_at, rowid LIMIT :limit",  # A3
}
_ROWID_SQL = "SELECT rowid FROM agents WHERE id = :id"  # where a page after that agent starts

_INSERT = (
    "INSERT INTO agents (id, name, specialization, task_id, state, model, spawned_at,"
    " resource_usage, session_id)"
    " VALUES (:id, :name, :specialization, :task_id, :state, :model, :spawned_at,"
    " :resource_usage, :session_id)" + _RETURNING
)
# resource_usage is kept unless a new value is given.
_SET_STATE = (
    "UPDATE agents SET state = :state,"
    " terminated_at = CASE WHEN :state = 'terminated' THEN :terminated_at ELSE terminated_at END,"
    " resource_usage = coalesce(:resource_usage, resource_usage)"
    " WHERE id = :id" + _RETURNING
)


def spawn(
    conn: sqlite3.Connection,
    task_id: str,
    name: str,
    specialization: str,
    model: str,
    *,
    agent_id: str | None = None,
    session_id: str | None = None,
    state: str = "spawning",
    resource_usage: Any = None,
) -> AgentRow:
    """Insert an agent working on `task_id` (its id generated unless given) and return it.

    :raises ForeignKeyError: when the task or the session does not exist.
    """
    _values.require_text(task_id, TABLE, "task_id")
    _values.require_text(name, TABLE, "name")
    _values.require_text(specialization, TABLE, "specialization")
    _values.require_text(model, TABLE, "model")
    _values.require_text(agent_id, TABLE, "id", optional=True)
    _values.require_text(session_id, TABLE, "session_id", optional=True)
    _values.require_choice(state, SPAWN_STATES, TABLE, "state")
    params = {
        "id": agent_id or _values.new_id(),
        "name": name,
        "specialization": specialization,
        "task_id": task_id,
        "state": state,
        "model": model,
        "spawned_at": _values.now(),
        "resource_usage": _usage_json(resource_usage),
        "session_id": session_id,
    }
    return write(conn, TABLE, _INSERT, params, decode_row)[0]


def get(conn: sqlite3.Connection, agent_id: str) -> AgentRow:
    """Return the agent `agent_id`; raise NotFoundError if there is none."""
    _values.require_text(agent_id, TABLE, "id")
    agent = one(conn, TABLE, GET_SQL, {"id": agent_id}, decode_row)
    if agent is None:
        raise NotFoundError(f"{TABLE}: no agent with id {short_repr(agent_id)}")
    return agent


def list(  # noqa: A001 - the module's API reads agents.list(conn, ...)
    conn: sqlite3.Connection,
    *,
    task_id: str | None = None,
    session_id: str | None = None,
    spawned_since: Any = None,
    spawned_until: Any = None,
    limit: int = _paging.DEFAULT_LIMIT,
    after: AgentRow | None = None,
) -> builtins.list[AgentRow]:
    """Return at most `limit` agents of one task, of one session, or spawned in a time range.

    Exactly one of `task_id`, `session_id` or the range [`spawned_since`,
    `spawned_until`) (either end may be open) must be given. A task's agents and
    a range come oldest first, a session's agents newest first. `after` is the last
    agent of the previous page.
    """
    group, params = _values.list_filter(TABLE, limit, {"task_id": task_id, "session_id": session_id},
                                        "spawned", spawned_since, spawned_until, min_limit=1)
    last = None
    if after is not None:
        agent_id, spawned_at = _paging.anchor(after, TABLE, {"id": str, "spawned_at": str})
        last = (spawned_at, _paging.rowid_of(conn, TABLE, _ROWID_SQL, {"id": agent_id}))
    _paging.set_start(params, last, newest_first=group == "session_id")
    return rows(conn, TABLE, LIST_SQL[group], params, decode_row)


def set_state(conn: sqlite3.Connection, agent_id: str, state: str) -> AgentRow:
    """Move the agent to `state` and return it.

    Allowed: spawning to idle or busy; idle and busy to each other; spawning, idle
    and busy to terminating; any state but terminated to terminated (which sets
    ``terminated_at``). Terminated is final.

    :raises TransitionError: when `state` cannot follow the current one.
    """
    _values.require_choice(state, STATES, TABLE, "state")
    return _change_state(conn, agent_id, state, None)


def terminate(conn: sqlite3.Connection, agent_id: str, resource_usage: Any = None) -> AgentRow:
    """Mark the agent terminated now, recording `resource_usage` when given; return it.

    :raises TransitionError: when the agent is already terminated.
    """
    return _change_state(conn, agent_id, "terminated", _usage_json(resource_usage))


def _change_state(
    conn: sqlite3.Connection, agent_id: str, state: str, resource_usage: str | None
) -> AgentRow:
    _values.require_text(agent_id, TABLE, "id")
    params = {"id": agent_id, "state": state, "terminated_at": _values.now(), "resource_usage": resource_usage}
    # Read and changed under one write lock: no other writer can move the state in between.
    with transaction(conn):
        found = one(conn, TABLE, _STATE_SQL, params)
        if found is None:
            raise NotFoundError(f"{TABLE}: no agent with id {short_repr(agent_id)}")
        _values.require_transition(_NEXT, found[0], state, f"{TABLE}: agent {agent_id!r}", "state")
        return write(conn, TABLE, _SET_STATE, params, decode_row)[0]


def _usage_json(value: Any) -> str | None:
    """Return `value` as resource_usage JSON text, or None (SQL NULL) when there is no value."""
    return None if value is None else _values.to_json(value, TABLE, "resource_usage")
