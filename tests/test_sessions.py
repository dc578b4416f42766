"""Sessions: create, get, status changes, deletion that unlinks instead of deleting."""

from __future__ import annotations

import re

import pytest

from abathur_db import sessions
from abathur_db.errors import NotFoundError, TransitionError, UniqueError, ValidationError
from helpers import tracing, unchecked

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _count(conn) -> int:
    return conn.execute("SELECT count(*) FROM sessions").fetchone()[0]


def test_create_and_get_round_trip(conn):
    """A created session comes back from get() with every field, JSON decoded."""
    created = sessions.create(conn, "app", "user-1", project_id="p", events=[{"e": 1}],
                              state={"k": [1, 2]}, metadata={"m": "é"})
    assert created == sessions.get(conn, created["id"])
    assert created["status"] == "created"
    assert created["events"] == [{"e": 1}] and created["state"] == {"k": [1, 2]}
    assert TIMESTAMP.fullmatch(created["created_at"])
    assert created["last_update_time"] == created["created_at"]
    assert created["terminated_at"] is None and created["archived_at"] is None


def test_missing_json_fields_are_stored_as_empty_json(conn):
    """No events, state or metadata stores the JSON texts '[]', '{}' and '{}', never SQL NULL."""
    created = sessions.create(conn, "app", "user")
    assert (created["events"], created["state"], created["metadata"]) == ([], {}, {})
    stored = conn.execute("SELECT events, typeof(events), state, typeof(state), metadata, typeof(metadata)"
                          " FROM sessions").fetchone()
    assert stored == ("[]", "text", "{}", "text", "{}", "text")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"app_name": ""}, ValidationError, "sessions.app_name"),
        ({"user_id": 7}, ValidationError, "sessions.user_id"),
        ({"status": "sleeping"}, ValidationError, "sessions.status: 'sleeping'"),
        ({"events": {"not": "a list"}}, ValidationError, "sessions.events: expected a JSON array"),
        ({"state": [1]}, ValidationError, "sessions.state: expected a JSON object"),
        ({"metadata": {"x": float("nan")}}, ValidationError, "sessions.metadata"),
        ({"session_id": "dup"}, UniqueError, "sessions.id = 'dup'"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(conn, kwargs, error, message):
    """Each bad value raises its specific error naming the field; no row is added."""
    sessions.create(conn, "app", "u", session_id="dup")
    args = {"app_name": "app", "user_id": "u", **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        sessions.create(conn, args.pop("app_name"), args.pop("user_id"), **args)
    assert _count(conn) == 1


def test_unknown_session_is_not_found(conn):
    """get, set_status and delete of an unknown id raise NotFoundError."""
    for call in (lambda: sessions.get(conn, "nope"),
                 lambda: sessions.set_status(conn, "nope", "active"),
                 lambda: sessions.delete(conn, "nope")):
        with pytest.raises(NotFoundError, match="sessions: no session with id 'nope'"):
            call()


def test_status_changes_keep_their_timestamps(conn):
    """terminated_at and archived_at record their moments; last_update_time follows each change."""
    session = sessions.create(conn, "app", "u")
    active = sessions.set_status(conn, session["id"], "active")
    assert active["last_update_time"] >= session["last_update_time"]
    terminated = sessions.set_status(conn, session["id"], "terminated")
    assert terminated["terminated_at"] == terminated["last_update_time"]
    archived = sessions.set_status(conn, session["id"], "archived")
    assert archived["terminated_at"] == terminated["terminated_at"]
    assert archived["archived_at"] == archived["last_update_time"] >= terminated["terminated_at"]


@pytest.mark.parametrize("status, stamped", [("created", None), ("active", None), ("paused", None),
                                             ("terminated", "terminated_at"), ("archived", "archived_at")])
def test_a_session_created_terminated_or_archived_records_that_moment(conn, status, stamped):
    """Created in a final state, a session's terminated_at or archived_at is its created_at; the other stays NULL."""
    session = sessions.create(conn, "app", "user", status=status)
    for column in ("terminated_at", "archived_at"):
        assert session[column] == (session["created_at"] if column == stamped else None), column
    assert sessions.get(conn, session["id"]) == session


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        (["terminated"], "active"),
        (["terminated"], "paused"),
        (["archived"], "active"),
        (["archived"], "terminated"),
        (["active"], "created"),
    ],
)
def test_illegal_status_changes_change_nothing(conn, path, refused):
    """A status that cannot follow the current one raises TransitionError and leaves the row."""
    session = sessions.create(conn, "app", "u")
    for status in path:
        sessions.set_status(conn, session["id"], status)
    before = sessions.get(conn, session["id"])
    with pytest.raises(TransitionError, match=f"cannot go from '{path[-1]}' to '{refused}'"):
        sessions.set_status(conn, session["id"], refused)
    assert sessions.get(conn, session["id"]) == before


def test_unknown_status_is_a_validation_error(conn):
    """set_status with a status outside the enumeration is refused before any lookup."""
    with pytest.raises(ValidationError, match="sessions.status: 'done'"):
        sessions.set_status(conn, "whatever", "done")


def test_delete_unlinks_tasks_agents_and_checkpoints(conn, make_task):
    """Deleting a session sets session_id to NULL on its rows and deletes nothing else."""
    gone = sessions.create(conn, "app", "u")["id"]
    kept = sessions.create(conn, "app", "u")["id"]
    t1, t2 = make_task(session_id=gone), make_task(session_id=kept)
    conn.execute("INSERT INTO agents (id, name, specialization, task_id, model, session_id) "
                 "VALUES ('a1', 'n', 's', ?, 'm', ?), ('a2', 'n', 's', ?, 'm', ?)", (t1, gone, t2, kept))
    conn.execute("INSERT INTO checkpoints (task_id, iteration, state, session_id) "
                 "VALUES (?, 0, '{}', ?), (?, 0, '{}', ?)", (t1, gone, t2, kept))
    conn.execute("INSERT INTO audit (task_id, agent_id, action_type) VALUES (?, 'a1', 'x')", (t1,))
    sessions.delete(conn, gone)
    for table in ("tasks", "agents", "checkpoints"):
        links = conn.execute(f"SELECT session_id FROM {table} ORDER BY session_id").fetchall()
        assert links == [(None,), (kept,)], table
    assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 1
    assert [s for (s,) in conn.execute("SELECT id FROM sessions")] == [kept]


def test_a_status_this_version_does_not_know_refuses_changes(conn):
    """An out-of-enum status (an upgrade keeps it) is read as stored; a change from it raises TransitionError."""
    session = sessions.create(conn, "app", "user")
    with unchecked(conn):
        conn.execute("UPDATE sessions SET status = 'sleeping' WHERE id = ?", (session["id"],))
    assert sessions.get(conn, session["id"])["status"] == "sleeping"
    with pytest.raises(TransitionError, match="from 'sleeping' \\(a status this version does not know"):
        sessions.set_status(conn, session["id"], "active")
    assert not conn.in_transaction


def test_set_status_reads_the_current_status_inside_its_write_transaction(conn):
    """The current status is read under the write lock, so no other writer can change it before the update."""
    session = sessions.create(conn, "app", "user")
    with tracing(conn) as sent:
        sessions.set_status(conn, session["id"], "active")
    assert [s.split()[0] for s in sent] == ["BEGIN", "SELECT", "UPDATE", "COMMIT"], sent
    assert sent[1].startswith("SELECT status FROM sessions")
