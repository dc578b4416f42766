"""Conversation sessions: create, get, change status, delete."""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, cast

from . import _values
from .errors import NotFoundError, short_repr
from .rows import SessionRow
from .transaction import Row, one, transaction, write

TABLE = "sessions"
STATUSES = ("created", "active", "paused", "terminated", "archived")
COLUMNS = (
    "id", "app_name", "user_id", "project_id", "status", "events", "state", "metadata",
    "created_at", "last_update_time", "terminated_at", "archived_at",
)
JSON_COLUMNS = ("events", "state", "metadata")
decode_row = cast("Callable[[Row], SessionRow]", _values.decoder(TABLE, COLUMNS, JSON_COLUMNS))
_RETURNING = " RETURNING " + ", ".join(COLUMNS)

# Allowed status changes: a terminated session can only be archived, an archived one is final.
_NEXT = {
    "created": {"active", "paused", "terminated", "archived"},
    "active": {"paused", "terminated", "archived"},
    "paused": {"active", "terminated", "archived"},
    "terminated": {"archived"},
    "archived": set(),
}

GET_SQL = f"SELECT {', '.join(COLUMNS)} FROM sessions WHERE id = :id"  # catalog S1
_STATUS_SQL = "SELECT status FROM sessions WHERE id = :id"

_INSERT = (
    "INSERT INTO sessions (id, app_name, user_id, project_id, status, events, state, metadata,"
    " created_at, last_update_time, terminated_at, archived_at)"
    " VALUES (:id, :app_name, :user_id, :project_id, :status, :events, :state, :metadata, :now, :now,"
    " CASE WHEN :status = 'terminated' THEN :now END, CASE WHEN :status = 'archived' THEN :now END)"
    + _RETURNING
)
_SET_STATUS = (
    "UPDATE sessions SET status = :status, last_update_time = :now,"
    " terminated_at = CASE WHEN :status = 'terminated' THEN :now ELSE terminated_at END,"
    " archived_at = CASE WHEN :status = 'archived' THEN :now ELSE archived_at END"
    " WHERE id = :id" + _RETURNING
)
_DELETE = "DELETE FROM sessions WHERE id = :id RETURNING id"


def create(
    conn: sqlite3.Connection,
    app_name: str,
    user_id: str,
    *,
    session_id: str | None = None,
    project_id: str | None = None,
    status: str = "created",
    events: list[Any] | None = None,
    state: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> SessionRow:
    """Insert a session (its id generated unless given) and return it.

    Created ``terminated`` or ``archived``, its ``terminated_at`` or ``archived_at`` is its ``created_at``.
    """
    _values.require_text(app_name, TABLE, "app_name")
    _values.require_text(user_id, TABLE, "user_id")
    _values.require_text(session_id, TABLE, "id", optional=True)
    _values.require_text(project_id, TABLE, "project_id", optional=True)
    _values.require_choice(status, STATUSES, TABLE, "status")
    params = {
        "id": session_id or _values.new_id(),
        "app_name": app_name,
        "user_id": user_id,
        "project_id": project_id,
        "status": status,
        "events": _values.to_json([] if events is None else events, TABLE, "events", list),
        "state": _values.to_json({} if state is None else state, TABLE, "state", dict),
        "metadata": _values.to_json({} if metadata is None else metadata, TABLE, "metadata", dict),
        "now": _values.now(),
    }
    return write(conn, TABLE, _INSERT, params, decode_row)[0]


def get(conn: sqlite3.Connection, session_id: str) -> SessionRow:
    """Return the session `session_id`; raise NotFoundError if there is none."""
    _values.require_text(session_id, TABLE, "id")
    session = one(conn, TABLE, GET_SQL, {"id": session_id}, decode_row)
    if session is None:
        raise NotFoundError(f"{TABLE}: no session with id {short_repr(session_id)}")
    return session


def set_status(conn: sqlite3.Connection, session_id: str, status: str) -> SessionRow:
    """Move the session to `status` and return it.

    ``terminated_at`` and ``archived_at`` record when the session first reached
    those states; ``last_update_time`` moves with every change.

    :raises TransitionError: when `status` cannot follow the current one.
    """
    _values.require_text(session_id, TABLE, "id")
    _values.require_choice(status, STATUSES, TABLE, "status")
    params = {"id": session_id, "status": status, "now": _values.now()}
    # Read and changed under one write lock: no other writer can move the status in between.
    with transaction(conn):
        found = one(conn, TABLE, _STATUS_SQL, params)
        if found is None:
            raise NotFoundError(f"{TABLE}: no session with id {short_repr(session_id)}")
        _values.require_transition(_NEXT, found[0], status, f"{TABLE}: session {session_id!r}", "status")
        return write(conn, TABLE, _SET_STATUS, params, decode_row)[0]


def delete(conn: sqlite3.Connection, session_id: str) -> None:
    """Delete the session; its tasks, agents and checkpoints keep their rows, unlinked.

    The foreign keys (``ON DELETE SET NULL``) set their ``session_id`` to NULL.
    """
    _values.require_text(session_id, TABLE, "id")
    if not write(conn, TABLE, _DELETE, {"id": session_id}):
        raise NotFoundError(f"{TABLE}: no session with id {short_repr(session_id)}")
