"""agents: spawn, get, list, set_state, terminate."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re

import pytest

from abathur_db import agents, sessions
from abathur_db.errors import ForeignKeyError, NotFoundError, TransitionError, UniqueError, ValidationError
from helpers import tracing, unchecked

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Written out here, independently of the module, so that a change there shows up.
LEGAL = {
    ("spawning", "idle"), ("spawning", "busy"), ("spawning", "terminating"), ("spawning", "terminated"),
    ("idle", "busy"), ("idle", "terminating"), ("idle", "terminated"),
    ("busy", "idle"), ("busy", "terminating"), ("busy", "terminated"),
    ("terminating", "terminated"),
}
ALL_PAIRS = list(itertools.product(agents.STATES, repeat=2))


def count(conn) -> int:
    return conn.execute("SELECT count(*) FROM agents").fetchone()[0]


def put_state(conn, agent_id: str, state: str) -> None:
    conn.execute("UPDATE agents SET state = ? WHERE id = ?", (state, agent_id))


def spawned_at(conn, agent_id: str, moment: str) -> None:
    conn.execute("UPDATE agents SET spawned_at = ? WHERE id = ?", (moment, agent_id))


@pytest.fixture
def task(make_task):
    return make_task("t1")


@pytest.fixture
def agent(conn, task):
    return agents.spawn(conn, task, "worker", "coder", "model-a", agent_id="agent-1")


def test_spawn_returns_the_stored_row(conn, task):
    """spawn stores every field, fills id, state and spawned_at, and returns what get returns."""
    session = sessions.create(conn, "app", "user")
    row = agents.spawn(
        conn, task, "worker", "coder", "model-a", session_id=session["id"], resource_usage={"tokens": 3}
    )
    assert row == agents.get(conn, row["id"])
    assert row["name"] == "worker" and row["specialization"] == "coder" and row["model"] == "model-a"
    assert row["task_id"] == task and row["session_id"] == session["id"]
    assert row["state"] == "spawning" and row["terminated_at"] is None
    assert row["resource_usage"] == {"tokens": 3}
    assert TIMESTAMP.fullmatch(row["spawned_at"])
    assert isinstance(row["id"], str) and row["id"]


@pytest.mark.parametrize("state", agents.SPAWN_STATES)
def test_spawn_accepts_a_live_initial_state(conn, task, state):
    """spawn can start an agent in any live, non-winding-down state."""
    assert agents.spawn(conn, task, "w", "s", "m", state=state)["state"] == state


def test_spawn_without_resource_usage_stores_null(conn, task):
    """No resource_usage is SQL NULL, not the JSON text 'null'."""
    row = agents.spawn(conn, task, "w", "s", "m")
    assert row["resource_usage"] is None
    assert conn.execute("SELECT resource_usage IS NULL FROM agents").fetchone()[0] == 1


def _stored_usage(conn, agent_id: str) -> tuple:
    """Return resource_usage as stored and its SQLite type, which the decoded row cannot tell apart."""
    return conn.execute("SELECT resource_usage, typeof(resource_usage) FROM agents WHERE id = ?",
                        (agent_id,)).fetchone()


@pytest.mark.parametrize("usage", [0, False, "", [], {}], ids=repr)
def test_a_falsy_resource_usage_is_stored_as_json_not_null(conn, task, usage):
    """A resource_usage that is falsy but not None (0, false, "", [], {}) is stored as its JSON text."""
    agent = agents.spawn(conn, task, "w", "s", "m", resource_usage=usage)
    stored, kind = _stored_usage(conn, agent["id"])
    assert kind == "text" and json.loads(stored) == usage and type(json.loads(stored)) is type(usage)
    other = agents.spawn(conn, task, "w", "s", "m")
    agents.terminate(conn, other["id"], usage)
    assert _stored_usage(conn, other["id"]) == (stored, "text")


def test_state_changes_without_usage_leave_sql_null(conn, task):
    """set_state and terminate without resource_usage keep a missing one SQL NULL, not the text 'null'."""
    agent = agents.spawn(conn, task, "w", "s", "m")
    agents.set_state(conn, agent["id"], "idle")
    assert _stored_usage(conn, agent["id"]) == (None, "null")
    agents.terminate(conn, agent["id"])
    assert _stored_usage(conn, agent["id"]) == (None, "null")


BAD_SPAWNS = [
    pytest.param({"task_id": "missing"}, ForeignKeyError, "task_id", "'missing'", id="unknown-task"),
    pytest.param({"session_id": "missing"}, ForeignKeyError, "session_id", "'missing'", id="unknown-session"),
    pytest.param({"agent_id": "agent-1"}, UniqueError, "id", "'agent-1'", id="duplicate-id"),
    pytest.param({"state": "sleeping"}, ValidationError, "state", "'sleeping'", id="unknown-state"),
    pytest.param({"state": "terminated"}, ValidationError, "state", "'terminated'", id="final-state"),
    pytest.param({"name": 42}, ValidationError, "name", "42", id="name-int"),
    pytest.param({"name": ""}, ValidationError, "name", "''", id="name-empty"),
    pytest.param({"specialization": None}, ValidationError, "specialization", "None", id="spec-none"),
    pytest.param({"model": b"m"}, ValidationError, "model", "b'm'", id="model-bytes"),
    pytest.param({"task_id": 7}, ValidationError, "task_id", "7", id="task-int"),
    pytest.param({"session_id": ["s"]}, ValidationError, "session_id", "['s']", id="session-list"),
    pytest.param({"resource_usage": float("nan")}, ValidationError, "resource_usage", "nan", id="json-nan"),
    pytest.param({"resource_usage": {"x": float("inf")}}, ValidationError, "resource_usage", "inf",
                 id="json-inf"),
    pytest.param({"resource_usage": {1, 2}}, ValidationError, "resource_usage", "{1, 2}", id="json-set"),
]


@pytest.mark.parametrize("override, error, field, shown", BAD_SPAWNS)
def test_spawn_rejects_bad_input(conn, agent, override, error, field, shown):
    """Bad input raises the specific error naming table, field and value, and stores nothing."""
    args = {"task_id": agent["task_id"], "name": "w", "specialization": "s", "model": "m", **override}
    before = count(conn)
    with pytest.raises(error) as caught:
        agents.spawn(conn, args.pop("task_id"), args.pop("name"), args.pop("specialization"),
                     args.pop("model"), **args)
    assert f"agents.{field}" in str(caught.value) and shown in str(caught.value)
    assert count(conn) == before


def test_error_message_quotes_a_huge_value_briefly(conn, task):
    """A 1 MB unknown id is named in the error, shortened."""
    with pytest.raises(ForeignKeyError) as caught:
        agents.spawn(conn, "x" * 1_000_000, "w", "s", "m")
    assert "agents.task_id" in str(caught.value) and len(str(caught.value)) < 500
    assert count(conn) == 0


@pytest.mark.parametrize("agent_id, error", [
    pytest.param("missing", NotFoundError, id="unknown"),
    pytest.param(12, ValidationError, id="int"),
    pytest.param(None, ValidationError, id="none"),
])
def test_get_rejects_unknown_or_wrong_ids(conn, agent_id, error):
    """get names the table and the id it could not find or accept."""
    with pytest.raises(error) as caught:
        agents.get(conn, agent_id)
    assert "agents" in str(caught.value) and repr(agent_id) in str(caught.value)


def test_list_by_task_is_oldest_first_and_limited(conn, make_task):
    """A task's agents come in spawn order (rowid breaking ties); other tasks' agents stay out."""
    t1, t2 = make_task("t1"), make_task("t2")
    ids = [agents.spawn(conn, t1, f"w{i}", "s", "m")["id"] for i in range(4)]
    agents.spawn(conn, t2, "other", "s", "m")
    spawned_at(conn, ids[0], "2024-01-02T00:00:00.000Z")
    for agent_id in ids[1:]:
        spawned_at(conn, agent_id, "2024-01-01T00:00:00.000Z")
    assert [a["id"] for a in agents.list(conn, task_id=t1)] == ids[1:] + ids[:1]
    assert [a["id"] for a in agents.list(conn, task_id=t1, limit=2)] == ids[1:3]
    assert agents.list(conn, task_id="missing") == []


def test_list_by_session_is_newest_first(conn, task):
    """A session's agents come newest spawned first, the later insert first on a tie."""
    session = sessions.create(conn, "app", "user")["id"]
    ids = [agents.spawn(conn, task, f"w{i}", "s", "m", session_id=session)["id"] for i in range(3)]
    agents.spawn(conn, task, "unlinked", "s", "m")
    spawned_at(conn, ids[0], "2024-01-03T00:00:00.000Z")
    spawned_at(conn, ids[1], "2024-01-01T00:00:00.000Z")
    spawned_at(conn, ids[2], "2024-01-01T00:00:00.000Z")
    assert [a["id"] for a in agents.list(conn, session_id=session)] == [ids[0], ids[2], ids[1]]
    assert [a["id"] for a in agents.list(conn, session_id=session, limit=1)] == [ids[0]]


@pytest.mark.parametrize("since, until, expected", [
    pytest.param("2024-01-02T00:00:00.000Z", "2024-01-04T00:00:00.000Z", [1, 2], id="half-open"),
    pytest.param(dt.datetime(2024, 1, 2, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))), None, [1, 2, 3],
                 id="aware-datetime-open-end"),
    pytest.param(None, "2024-01-02T00:00:00+00:00", [0], id="open-start-offset-string"),
    pytest.param("2025-01-01T00:00:00.000Z", None, [], id="after-all"),
])
def test_list_spawned_in_a_range(conn, task, since, until, expected):
    """A range [since, until) selects by spawned_at, oldest first; either end may be open."""
    ids = [agents.spawn(conn, task, f"w{i}", "s", "m")["id"] for i in range(4)]
    for day, agent_id in enumerate(ids, start=1):
        spawned_at(conn, agent_id, f"2024-01-0{day}T00:00:00.000Z")
    rows = agents.list(conn, spawned_since=since, spawned_until=until)
    assert [r["id"] for r in rows] == [ids[i] for i in expected]


@pytest.mark.parametrize("kwargs, shown", [
    pytest.param({}, "none", id="no-filter"),
    pytest.param({"task_id": "t1", "session_id": "s"}, "session_id", id="two-filters"),
    pytest.param({"task_id": "t1", "spawned_since": "2024-01-01T00:00:00Z"}, "spawned", id="task-and-range"),
    pytest.param({"task_id": 5}, "agents.task_id", id="task-int"),
    pytest.param({"session_id": ""}, "agents.session_id", id="session-empty"),
    pytest.param({"spawned_since": "yesterday"}, "'yesterday'", id="bad-time"),
    pytest.param({"spawned_until": dt.datetime(2024, 1, 1)}, "agents.spawned_until", id="naive-time"),
    pytest.param({"task_id": "t1", "limit": -1}, "agents.limit", id="negative-limit"),
    pytest.param({"task_id": "t1", "limit": "10"}, "agents.limit", id="text-limit"),
    pytest.param({"task_id": "t1", "limit": 2**63}, "agents.limit", id="huge-limit"),
])
def test_list_rejects_bad_filters(conn, kwargs, shown):
    """list needs exactly one valid filter group and a valid limit."""
    with pytest.raises(ValidationError) as caught:
        agents.list(conn, **kwargs)
    assert "agents" in str(caught.value) and shown in str(caught.value)


@pytest.mark.parametrize("current, target", sorted(LEGAL))
def test_legal_state_changes(conn, agent, current, target):
    """Each allowed change is stored; terminated_at is set exactly when reaching terminated."""
    put_state(conn, agent["id"], current)
    row = agents.set_state(conn, agent["id"], target)
    assert row == agents.get(conn, agent["id"])
    assert row["state"] == target
    assert (row["terminated_at"] is not None) == (target == "terminated")
    if row["terminated_at"] is not None:
        assert TIMESTAMP.fullmatch(row["terminated_at"])


@pytest.mark.parametrize("current, target", [pair for pair in ALL_PAIRS if pair not in LEGAL])
def test_illegal_state_changes_raise_and_change_nothing(conn, agent, current, target):
    """Every change outside the state machine raises TransitionError and leaves the row as it was."""
    put_state(conn, agent["id"], current)
    before = agents.get(conn, agent["id"])
    with pytest.raises(TransitionError) as caught:
        agents.set_state(conn, agent["id"], target)
    assert repr(current) in str(caught.value) and repr(target) in str(caught.value)
    assert agents.get(conn, agent["id"]) == before


@pytest.mark.parametrize("agent_id, state, error, shown", [
    pytest.param("agent-1", "asleep", ValidationError, "agents.state", id="unknown-state"),
    pytest.param("agent-1", None, ValidationError, "agents.state", id="none-state"),
    pytest.param("missing", "idle", NotFoundError, "'missing'", id="unknown-agent"),
])
def test_set_state_rejects_bad_input(conn, agent, agent_id, state, error, shown):
    """An unknown state or agent raises the specific error and changes nothing."""
    with pytest.raises(error) as caught:
        agents.set_state(conn, agent_id, state)
    assert shown in str(caught.value)
    assert agents.get(conn, agent["id"]) == agent


@pytest.mark.parametrize("change", [
    pytest.param(lambda conn, agent_id: agents.set_state(conn, agent_id, "idle"), id="set_state"),
    pytest.param(lambda conn, agent_id: agents.terminate(conn, agent_id), id="terminate"),
])
def test_state_change_reads_the_current_state_inside_its_write_transaction(conn, agent, change):
    """The current state is read under the write lock, so no other writer can change it before the update."""
    with tracing(conn) as sent:
        change(conn, agent["id"])
    assert [s.split()[0] for s in sent] == ["BEGIN", "SELECT", "UPDATE", "COMMIT"], sent
    assert sent[1].startswith("SELECT state FROM agents")


@pytest.mark.parametrize("change", [
    pytest.param(lambda conn, agent_id: agents.set_state(conn, agent_id, "idle"), id="set_state"),
    pytest.param(lambda conn, agent_id: agents.terminate(conn, agent_id), id="terminate"),
])
def test_a_state_this_version_does_not_know_refuses_changes(conn, agent, change):
    """An out-of-enum state (an upgrade keeps it) is read as stored; a change from it raises TransitionError."""
    with unchecked(conn):
        conn.execute("UPDATE agents SET state = 'hibernating' WHERE id = ?", (agent["id"],))
    assert agents.get(conn, agent["id"])["state"] == "hibernating"
    with pytest.raises(TransitionError, match="from 'hibernating' \\(a state this version does not know"):
        change(conn, agent["id"])
    assert not conn.in_transaction


@pytest.mark.parametrize("current", ["spawning", "idle", "busy", "terminating"])
def test_terminate_records_time_and_usage(conn, agent, current):
    """terminate from any live state sets state, terminated_at and the given resource_usage."""
    put_state(conn, agent["id"], current)
    row = agents.terminate(conn, agent["id"], {"tokens": 10, "note": "it's done"})
    assert row == agents.get(conn, agent["id"])
    assert row["state"] == "terminated" and TIMESTAMP.fullmatch(row["terminated_at"])
    assert row["resource_usage"] == {"tokens": 10, "note": "it's done"}


def test_terminate_without_usage_keeps_the_earlier_usage(conn, task):
    """terminate with no resource_usage keeps what spawn recorded."""
    agent = agents.spawn(conn, task, "w", "s", "m", resource_usage=[1, 2])
    assert agents.terminate(conn, agent["id"])["resource_usage"] == [1, 2]


@pytest.mark.parametrize("agent_id, usage, error, shown", [
    pytest.param("agent-1", float("nan"), ValidationError, "agents.resource_usage", id="nan"),
    pytest.param("agent-1", {"s": {1}}, ValidationError, "agents.resource_usage", id="set"),
    pytest.param("missing", None, NotFoundError, "'missing'", id="unknown-agent"),
])
def test_terminate_rejects_bad_input(conn, agent, agent_id, usage, error, shown):
    """Bad usage or an unknown agent raises the specific error and changes nothing."""
    with pytest.raises(error) as caught:
        agents.terminate(conn, agent_id, usage)
    assert shown in str(caught.value)
    assert agents.get(conn, agent["id"]) == agent


def test_terminate_twice_is_refused(conn, agent):
    """A terminated agent stays as it was terminated."""
    first = agents.terminate(conn, agent["id"], {"n": 1})
    with pytest.raises(TransitionError):
        agents.terminate(conn, agent["id"], {"n": 2})
    assert agents.get(conn, agent["id"]) == first


def test_session_delete_unlinks_agents_and_deletes_nothing(conn, task):
    """Deleting a session sets session_id to NULL on its agents; other agents are untouched."""
    gone, kept = sessions.create(conn, "app", "u")["id"], sessions.create(conn, "app", "u")["id"]
    linked = agents.spawn(conn, task, "linked", "s", "m", session_id=gone)
    other = agents.spawn(conn, task, "other", "s", "m", session_id=kept)
    unlinked = agents.spawn(conn, task, "unlinked", "s", "m")
    sessions.delete(conn, gone)
    assert count(conn) == 3
    assert agents.get(conn, linked["id"]) == {**linked, "session_id": None}
    assert agents.get(conn, other["id"]) == other
    assert agents.get(conn, unlinked["id"]) == unlinked
