"""audit: record and list, memory-operation columns included."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from abathur_db import agents, audit
from abathur_db.errors import ForeignKeyError, ValidationError

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def count(conn) -> int:
    return conn.execute("SELECT count(*) FROM audit").fetchone()[0]


def memory_entry(conn, namespace: str = "ns", key: str = "k") -> int:
    """Insert a memory entry by raw SQL (its service comes in a later milestone); return its id."""
    return conn.execute(
        "INSERT INTO memory_entries (namespace, key, value, memory_type) VALUES (?, ?, '{}', 'semantic')"
        " RETURNING id", (namespace, key),
    ).fetchone()[0]


def stamp(conn, audit_id: int, moment: str) -> None:
    conn.execute("UPDATE audit SET timestamp = ? WHERE id = ?", (moment, audit_id))


@pytest.fixture
def task(make_task):
    return make_task("t1")


@pytest.fixture
def agent(conn, task):
    return agents.spawn(conn, task, "w", "s", "m", agent_id="agent-1")["id"]


def test_record_returns_the_stored_row(conn, task, agent):
    """record stores every column, timestamps the row now, and returns it as list reads it."""
    entry = memory_entry(conn)
    row = audit.record(
        conn, "memory.write", task_id=task, agent_id=agent, action_data={"key": "k", "n": [1, 2]},
        result="ok", memory_operation_type="create", memory_namespace="ns", memory_entry_id=entry,
    )
    assert audit.list(conn) == [row]
    assert row["action_type"] == "memory.write" and row["task_id"] == task and row["agent_id"] == agent
    assert row["action_data"] == {"key": "k", "n": [1, 2]} and row["result"] == "ok"
    memory = (row["memory_operation_type"], row["memory_namespace"], row["memory_entry_id"])
    assert memory == ("create", "ns", entry)
    assert isinstance(row["id"], int) and TIMESTAMP.fullmatch(row["timestamp"])


def test_record_with_only_an_action_type(conn):
    """Every link and payload is optional; missing ones are SQL NULL."""
    row = audit.record(conn, "startup")
    assert {k: v for k, v in row.items() if v is not None} == {
        "id": row["id"], "timestamp": row["timestamp"], "action_type": "startup"}
    assert conn.execute("SELECT action_data IS NULL FROM audit").fetchone()[0] == 1


@pytest.mark.parametrize("action_data", [0, False, "", [], {}], ids=repr)
def test_a_falsy_action_data_is_stored_as_json_not_null(conn, action_data):
    """An action_data that is falsy but not None (0, false, "", [], {}) is stored as its JSON text."""
    audit.record(conn, "note", action_data=action_data)
    stored, kind = conn.execute("SELECT action_data, typeof(action_data) FROM audit").fetchone()
    assert kind == "text" and json.loads(stored) == action_data and type(json.loads(stored)) is type(action_data)


@pytest.mark.parametrize("operation", audit.MEMORY_OPERATION_TYPES)
def test_record_accepts_every_memory_operation_type(conn, operation):
    """Each documented memory operation type is stored."""
    assert audit.record(conn, "memory", memory_operation_type=operation)["memory_operation_type"] == operation


BAD_RECORDS = [
    pytest.param({"task_id": "missing"}, ForeignKeyError, "task_id", "'missing'", id="unknown-task"),
    pytest.param({"agent_id": "missing"}, ForeignKeyError, "agent_id", "'missing'", id="unknown-agent"),
    pytest.param({"memory_entry_id": 999}, ForeignKeyError, "memory_entry_id", "999",
                 id="unknown-memory-entry"),
    pytest.param({"memory_operation_type": "erase"}, ValidationError, "memory_operation_type", "'erase'",
                 id="unknown-operation"),
    pytest.param({"memory_operation_type": ""}, ValidationError, "memory_operation_type", "''",
                 id="empty-operation"),
    pytest.param({"action_type": ""}, ValidationError, "action_type", "''", id="empty-action-type"),
    pytest.param({"action_type": 3}, ValidationError, "action_type", "3", id="int-action-type"),
    pytest.param({"task_id": 1}, ValidationError, "task_id", "1", id="int-task"),
    pytest.param({"result": {"ok": True}}, ValidationError, "result", "{'ok': True}", id="dict-result"),
    pytest.param({"memory_namespace": 5}, ValidationError, "memory_namespace", "5", id="int-namespace"),
    pytest.param({"memory_entry_id": "1"}, ValidationError, "memory_entry_id", "'1'", id="text-entry-id"),
    pytest.param({"memory_entry_id": True}, ValidationError, "memory_entry_id", "True", id="bool-entry-id"),
    pytest.param({"memory_entry_id": 2**63}, ValidationError, "memory_entry_id", str(2**63),
                 id="huge-entry-id"),
    pytest.param({"action_data": float("nan")}, ValidationError, "action_data", "nan", id="json-nan"),
    pytest.param({"action_data": {"v": float("-inf")}}, ValidationError, "action_data", "inf", id="json-inf"),
    pytest.param({"action_data": {"a", "b"}}, ValidationError, "action_data", "set", id="json-set"),
    pytest.param({"action_data": {"when": dt.date(2024, 1, 1)}}, ValidationError, "action_data", "date",
                 id="json-date"),
]


@pytest.mark.parametrize("override, error, field, shown", BAD_RECORDS)
def test_record_rejects_bad_input(conn, task, agent, override, error, field, shown):
    """Bad input raises the specific error naming table, field and value, and stores nothing."""
    audit.record(conn, "before")
    kwargs = {"action_type": "x", **override}
    before = count(conn)
    with pytest.raises(error) as caught:
        audit.record(conn, kwargs.pop("action_type"), **kwargs)
    assert f"audit.{field}" in str(caught.value) and shown in str(caught.value)
    assert count(conn) == before


def test_list_by_task_is_newest_first(conn, make_task):
    """A task's audit rows come newest first, the later id first on a tie; other tasks stay out."""
    t1, t2 = make_task("t1"), make_task("t2")
    ids = [audit.record(conn, f"a{i}", task_id=t1)["id"] for i in range(4)]
    audit.record(conn, "other", task_id=t2)
    audit.record(conn, "no task")
    stamp(conn, ids[0], "2024-01-09T00:00:00.000Z")
    for audit_id in ids[1:]:
        stamp(conn, audit_id, "2024-01-01T00:00:00.000Z")
    assert [r["id"] for r in audit.list(conn, task_id=t1)] == [ids[0], ids[3], ids[2], ids[1]]
    assert [r["id"] for r in audit.list(conn, task_id=t1, limit=2)] == [ids[0], ids[3]]
    assert [r["id"] for r in audit.list(conn, task_id=t1, since="2024-01-02T00:00:00Z")] == [ids[0]]


def test_list_latest_n(conn, make_task):
    """Without a filter, list returns the latest rows of every kind, newest first."""
    task = make_task()
    ids = [audit.record(conn, f"a{i}", task_id=task if i % 2 else None)["id"] for i in range(5)]
    for day, audit_id in zip((5, 1, 4, 2, 3), ids):
        stamp(conn, audit_id, f"2024-01-0{day}T00:00:00.000Z")
    assert [r["id"] for r in audit.list(conn, limit=3)] == [ids[0], ids[2], ids[4]]
    assert [r["id"] for r in audit.list(conn)] == [ids[0], ids[2], ids[4], ids[3], ids[1]]
    assert [r["id"] for r in audit.list(conn, since="2024-01-04T00:00:00Z")] == [ids[0], ids[2]]
    with pytest.raises(ValidationError, match="audit.limit"):
        audit.list(conn, limit=0)


@pytest.mark.parametrize("since, expected", [
    pytest.param(None, [3, 2, 0], id="no-since"),
    pytest.param("2024-01-02T00:00:00.000Z", [3, 2], id="since-is-inclusive"),
    pytest.param(dt.datetime(2024, 1, 2, 0, 0, 0, 1000, tzinfo=dt.timezone.utc), [3], id="aware-datetime"),
    pytest.param("2024-02-01T00:00:00+00:00", [], id="after-all"),
])
def test_list_by_memory_operation_type_since(conn, since, expected):
    """One operation type since a time (inclusive) comes newest first; other types stay out."""
    kinds = ["update", "create", "update", "update", None]
    ids = [audit.record(conn, "memory", memory_operation_type=kind)["id"] for kind in kinds]
    for day, audit_id in zip((1, 2, 2, 3, 4), ids):
        stamp(conn, audit_id, f"2024-01-0{day}T00:00:00.000Z")
    rows = audit.list(conn, memory_operation_type="update", since=since)
    assert [r["id"] for r in rows] == [ids[i] for i in expected]


def test_list_by_memory_entry(conn):
    """A memory entry's audit rows come newest recorded first, since a time when given; others stay out."""
    entry, other = memory_entry(conn, key="a"), memory_entry(conn, key="b")
    ids = [audit.record(conn, "memory", memory_entry_id=entry)["id"] for _ in range(3)]
    audit.record(conn, "memory", memory_entry_id=other)
    assert [r["id"] for r in audit.list(conn, memory_entry_id=entry)] == ids[::-1]
    assert [r["id"] for r in audit.list(conn, memory_entry_id=entry, limit=1)] == ids[-1:]
    stamp(conn, ids[0], "2024-01-01T00:00:00.000Z")
    stamp(conn, ids[1], "2024-01-02T00:00:00.000Z")
    assert [r["id"] for r in audit.list(conn, memory_entry_id=entry, since="2024-01-02T00:00:00Z")] == [
        ids[2], ids[1]]


def test_deleting_a_memory_entry_keeps_its_audit_rows_unlinked(conn):
    """Deleting a memory entry sets audit.memory_entry_id to NULL and keeps the audit row."""
    entry, other = memory_entry(conn, key="a"), memory_entry(conn, key="b")
    row = audit.record(conn, "memory", memory_operation_type="delete", memory_namespace="ns",
                       memory_entry_id=entry)
    kept = audit.record(conn, "memory", memory_entry_id=other)
    conn.execute("DELETE FROM memory_entries WHERE id = ?", (entry,))
    assert count(conn) == 2
    assert audit.list(conn, memory_operation_type="delete") == [{**row, "memory_entry_id": None}]
    assert audit.list(conn, memory_entry_id=other) == [kept]


@pytest.mark.parametrize("kwargs, shown", [
    pytest.param({"task_id": "t", "memory_entry_id": 1}, "memory_entry_id", id="two-filters"),
    pytest.param({"memory_operation_type": "erase"}, "audit.memory_operation_type", id="unknown-operation"),
    pytest.param({"task_id": ""}, "audit.task_id", id="empty-task"),
    pytest.param({"memory_entry_id": "7"}, "audit.memory_entry_id", id="text-entry"),
    pytest.param({"since": "last week"}, "'last week'", id="bad-since"),
    pytest.param({"since": dt.datetime(2024, 1, 1)}, "audit.since", id="naive-since"),
    pytest.param({"limit": -5}, "audit.limit", id="negative-limit"),
    pytest.param({"limit": None}, "audit.limit", id="none-limit"),
])
def test_list_rejects_bad_filters(conn, kwargs, shown):
    """list takes at most one filter, each valid, and a valid limit."""
    with pytest.raises(ValidationError) as caught:
        audit.list(conn, **kwargs)
    assert "audit" in str(caught.value) and shown in str(caught.value)
