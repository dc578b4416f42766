"""Tests of abathur_db.tasks: CRUD, listing, the queue's claims and status changes, and bad input."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time

import pytest

import abathur_db
from abathur_db import sessions, tasks, transaction
from abathur_db.transaction import _SIGNALS, CommitSignal
from abathur_db._values import format_datetime
from abathur_db.errors import (
    AbathurDBError,
    ConfigurationError,
    ForeignKeyError,
    LeaseLostError,
    NotFoundError,
    StoredValueError,
    TransitionError,
    UniqueError,
    ValidationError,
)
from helpers import SignalledCondition, on_data_version, tracing, unchecked, until

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
FUTURE = "2100-01-01T00:00:00.000Z"  # every running task is stale by then
PAST = "2000-01-01T00:00:00.000Z"  # no running task is stale yet


def at(seconds: float) -> str:
    """Return the timestamp `seconds` after BASE."""
    return format_datetime(BASE + dt.timedelta(seconds=seconds))


def counts(conn) -> tuple[int, int]:
    """Return the row counts of tasks and task_dependencies."""
    return (
        conn.execute("SELECT count(*) FROM tasks").fetchone()[0],
        conn.execute("SELECT count(*) FROM task_dependencies").fetchone()[0],
    )


def in_status(conn, status: str, **options) -> dict:
    """Create a task and drive it through the API into `status` (it must be the only claimable task)."""
    task = tasks.create(conn, "work", **options)
    if status == "pending":
        return task
    if status == "cancelled":
        return tasks.cancel(conn, task["id"])
    claimed = tasks.claim_next(conn)
    assert claimed["id"] == task["id"]
    if status == "completed":
        return tasks.complete(conn, task["id"], claimed["lease"], {"ok": True})
    if status == "failed":
        return tasks.fail(conn, task["id"], claimed["lease"], "boom")
    return claimed


# --- create / get ---------------------------------------------------------------------------


def test_create_stores_defaults_and_returns_the_row(conn):
    """A task created with only a prompt is pending, with the documented defaults."""
    task = tasks.create(conn, "write the report")
    assert task == tasks.get(conn, task["id"])
    assert task["status"] == "pending"
    assert (task["agent_type"], task["priority"], task["input_data"]) == ("general", 5, {})
    assert (task["retry_count"], task["max_retries"], task["max_execution_timeout_seconds"]) == (0, 3, 3600)
    assert task["dependencies"] == [] and task["unmet_dependencies"] == 0
    assert task["submitted_at"] == task["last_updated_at"]
    assert task["started_at"] is None and task["completed_at"] is None and task["result_data"] is None
    assert len(task["id"]) == 36


def test_create_stores_every_option(conn):
    """Every option of create() is stored and returned decoded."""
    session = sessions.create(conn, "app", "user")
    parent = tasks.create(conn, "parent")
    task = tasks.create(
        conn, "child", task_id="t-1", agent_type="coder", priority=10,
        input_data={"files": ["a.py"], "n": 1.5}, session_id=session["id"],
        parent_task_id=parent["id"], dependencies=[parent["id"]], max_retries=0,
        max_execution_timeout_seconds=60, created_by="lead", submitted_at=BASE,
    )
    assert task == tasks.get(conn, "t-1")
    assert task["input_data"] == {"files": ["a.py"], "n": 1.5}
    assert (task["session_id"], task["parent_task_id"], task["dependencies"]) == (
        session["id"], parent["id"], [parent["id"]])
    assert (task["agent_type"], task["priority"], task["max_retries"]) == ("coder", 10, 0)
    assert (task["max_execution_timeout_seconds"], task["created_by"]) == (60, "lead")
    assert task["submitted_at"] == "2024-01-01T00:00:00.000Z"


def test_create_without_dependencies_returns_the_row_as_stored(conn):
    """create() of a task without dependencies returns exactly what get() then reads, for every option."""
    session = sessions.create(conn, "app", "user")
    parent = tasks.create(conn, "parent")
    for options in ({}, {"task_id": "t-2", "agent_type": "coder", "priority": 0, "max_retries": 7,
                         "input_data": {"files": ["a.py"], "n": 1.5, "deep": [[{}]]}, "session_id": session["id"],
                         "parent_task_id": parent["id"], "max_execution_timeout_seconds": 1, "created_by": "lead",
                         "submitted_at": "2024-06-01T12:00:00+02:00"},
                    {"input_data": [], "dependencies": []}, {"input_data": "text", "dependencies": ()}):
        task = tasks.create(conn, "child", **options)
        assert task == tasks.get(conn, task["id"]), options
    assert task["input_data"] == "text"


def test_create_returns_the_unmet_dependency_count(conn):
    """The row create() returns counts the dependencies that are not yet completed."""
    done = in_status(conn, "completed")
    waiting = tasks.create(conn, "waiting")
    task = tasks.create(conn, "blocked", dependencies=(done["id"], waiting["id"]))
    assert task["unmet_dependencies"] == 1
    assert tasks.get(conn, task["id"])["unmet_dependencies"] == 1
    rows = conn.execute(
        "SELECT depends_on_task_id FROM task_dependencies WHERE task_id = ? ORDER BY 1", (task["id"],)
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted([done["id"], waiting["id"]])


def test_create_accepts_an_offset_timestamp_string(conn):
    """submitted_at given as ISO text with an offset is stored in the one UTC format."""
    task = tasks.create(conn, "p", submitted_at="2024-06-01T12:00:00+02:00")
    assert task["submitted_at"] == "2024-06-01T10:00:00.000Z"


@pytest.mark.parametrize("text", [
    "it's \"quoted\"",
    "'; DROP TABLE tasks; --",
    "SELECT * FROM tasks WHERE 1=1 OR ''=''",
    "ünïcødé — 日本語 — 🚀",
    "nul\x00inside",
    "x" * 100_000,
])
def test_claim_next_matches_an_agent_type_verbatim(conn, text):
    """An agent type with quotes, SQL keywords, unicode or NUL claims its own tasks, and a near miss none."""
    task = tasks.create(conn, "p", agent_type=text)
    assert tasks.claim_next(conn, agent_type=text + "?") is None
    assert tasks.claim_next(conn, agent_type=text[:-1]) is None
    assert tasks.claim_next(conn, agent_type=text)["id"] == task["id"]


BAD_CREATE = [
    # (create() keyword arguments, error, fragments the message must contain)
    ({"prompt": ""}, ValidationError, ["tasks.prompt", "''"]),
    ({"prompt": None}, ValidationError, ["tasks.prompt", "None"]),
    ({"prompt": b"bytes"}, ValidationError, ["tasks.prompt", "b'bytes'"]),
    ({"task_id": ""}, ValidationError, ["tasks.id", "''"]),
    ({"task_id": 7}, ValidationError, ["tasks.id", "7"]),
    ({"agent_type": ""}, ValidationError, ["tasks.agent_type", "''"]),
    ({"agent_type": None}, ValidationError, ["tasks.agent_type", "None"]),
    ({"priority": "high"}, ValidationError, ["tasks.priority", "'high'"]),
    ({"priority": 5.5}, ValidationError, ["tasks.priority", "5.5"]),
    ({"priority": True}, ValidationError, ["tasks.priority", "True"]),
    ({"priority": 11}, ValidationError, ["tasks.priority", "11"]),
    ({"priority": -1}, ValidationError, ["tasks.priority", "-1"]),
    ({"priority": None}, ValidationError, ["tasks.priority", "None"]),
    ({"max_retries": -1}, ValidationError, ["tasks.max_retries", "-1"]),
    ({"max_retries": 2.0}, ValidationError, ["tasks.max_retries", "2.0"]),
    ({"max_retries": False}, ValidationError, ["tasks.max_retries", "False"]),
    ({"max_execution_timeout_seconds": 0}, ValidationError, ["tasks.max_execution_timeout_seconds", "0"]),
    ({"max_execution_timeout_seconds": "60"}, ValidationError, ["tasks.max_execution_timeout_seconds", "'60'"]),
    ({"input_data": {"x": float("nan")}}, ValidationError, ["tasks.input_data", "nan"]),
    ({"input_data": float("inf")}, ValidationError, ["tasks.input_data", "inf"]),
    ({"input_data": {1, 2}}, ValidationError, ["tasks.input_data", "{1, 2}"]),
    ({"input_data": {"when": BASE}}, ValidationError, ["tasks.input_data", "datetime"]),
    ({"session_id": ""}, ValidationError, ["tasks.session_id", "''"]),
    ({"parent_task_id": 3}, ValidationError, ["tasks.parent_task_id", "3"]),
    ({"created_by": ""}, ValidationError, ["tasks.created_by", "''"]),
    ({"submitted_at": "yesterday"}, ValidationError, ["tasks.submitted_at", "'yesterday'"]),
    ({"submitted_at": dt.datetime(2024, 1, 1)}, ValidationError, ["tasks.submitted_at", "time zone"]),
    ({"submitted_at": 1700000000}, ValidationError, ["tasks.submitted_at", "1700000000"]),
    ({"dependencies": "existing"}, ValidationError, ["tasks.dependencies", "'existing'"]),
    ({"dependencies": None}, ValidationError, ["tasks.dependencies", "None"]),
    ({"dependencies": [""]}, ValidationError, ["tasks.dependencies", "''"]),
    ({"dependencies": [42]}, ValidationError, ["tasks.dependencies", "42"]),
    ({"dependencies": ["existing", "existing"]}, ValidationError, ["tasks.dependencies", "twice", "'existing'"]),
    ({"task_id": "me", "dependencies": ["me"]}, ValidationError, ["tasks.dependencies", "'me'", "itself"]),
    ({"task_id": "existing"}, UniqueError, ["tasks.id", "'existing'"]),
    ({"session_id": "ghost"}, ForeignKeyError, ["tasks.session_id", "'ghost'"]),
    ({"parent_task_id": "ghost"}, ForeignKeyError, ["tasks.parent_task_id", "'ghost'"]),
    ({"dependencies": ["ghost"]}, ForeignKeyError, ["tasks.dependencies", "'ghost'"]),
    ({"dependencies": ["existing", "ghost", "ghost2"]}, ForeignKeyError, ["tasks.dependencies", "'ghost'", "'ghost2'"]),
]


@pytest.mark.parametrize("kwargs, error, fragments", BAD_CREATE, ids=[repr(c[0])[:60] for c in BAD_CREATE])
def test_create_rejects_bad_input_and_writes_nothing(conn, kwargs, error, fragments):
    """Bad input raises the specific error naming table, field and value, and adds no row."""
    tasks.create(conn, "already there", task_id="existing")
    before = counts(conn)
    kwargs = {"prompt": "a prompt", **kwargs}
    prompt = kwargs.pop("prompt")
    with pytest.raises(error) as caught:
        tasks.create(conn, prompt, **kwargs)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert counts(conn) == before


def test_create_many_stores_every_task_in_one_transaction(conn):
    """create_many inserts all its tasks with one BEGIN IMMEDIATE … COMMIT and returns their ids in order."""
    with tracing(conn) as sent:
        ids = tasks.create_many(conn, [
            {"prompt": "first", "task_id": "m1", "priority": 9},
            {"prompt": "second", "dependencies": ["m1"], "input_data": {"k": 1}},
            {"prompt": "third", "submitted_at": at(5)},
        ])
    assert ids[0] == "m1" and len(set(ids)) == 3
    assert sent[0] == "BEGIN IMMEDIATE" and sent[-1] == "COMMIT"
    assert sent.count("BEGIN IMMEDIATE") == sent.count("COMMIT") == 1
    assert not any("SAVEPOINT" in statement for statement in sent)
    rows = {task_id: tasks.get(conn, task_id) for task_id in ids}
    assert [rows[i]["prompt"] for i in ids] == ["first", "second", "third"]
    assert rows[ids[1]]["unmet_dependencies"] == 1 and rows[ids[1]]["input_data"] == {"k": 1}
    assert rows[ids[0]]["submitted_at"] == rows[ids[1]]["submitted_at"]  # one moment for the batch
    assert rows[ids[2]]["submitted_at"] == at(5)
    assert {row["status"] for row in rows.values()} == {"pending"}


def test_create_many_items_that_omit_options_get_creates_defaults(conn):
    """A create_many item holding only a prompt is stored exactly as create() with only a prompt stores it."""
    (many,) = tasks.create_many(conn, [{"prompt": "p"}])
    single = tasks.create(conn, "p")["id"]
    moments = ("submitted_at", "last_updated_at")
    columns = ", ".join(c for c in tasks.COLUMNS if c not in ("id", *moments))
    stored = {task_id: conn.execute(f"SELECT {columns} FROM tasks WHERE id = ?", (task_id,)).fetchone()
              for task_id in (many, single)}
    assert stored[many] == stored[single]
    row = tasks.get(conn, many)
    assert (row["agent_type"], row["priority"], row["max_retries"], row["max_execution_timeout_seconds"]) == (
        "general", 5, 3, 3600)
    assert row["submitted_at"] == row["last_updated_at"]


def test_create_many_stores_nothing_when_one_task_is_refused(conn):
    """A bad task anywhere in the batch leaves no task of the batch behind."""
    with pytest.raises(ForeignKeyError, match="ghost"):
        tasks.create_many(conn, [{"prompt": "a"}, {"prompt": "b", "dependencies": ["ghost"]}])
    with pytest.raises(ValidationError, match="tasks.priority"):
        tasks.create_many(conn, [{"prompt": "a"}, {"prompt": "b", "priority": "high"}])
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0


@pytest.mark.parametrize("bad, error, shown", [
    ({"prompt": "c", "task_id": "m1"}, UniqueError, "duplicate tasks.id = 'm1'"),
    ({"prompt": "c", "session_id": "nowhere"}, ForeignKeyError, "tasks.session_id = 'nowhere'"),
    ({"prompt": "c", "parent_task_id": "nobody"}, ForeignKeyError, "tasks.parent_task_id = 'nobody'"),
])
def test_create_many_names_the_task_the_database_refused(conn, bad, error, shown):
    """A task a constraint refuses in the middle of a batch is named by its own values; the batch stores nothing."""
    with pytest.raises(error, match=re.escape(shown)):
        tasks.create_many(conn, [{"prompt": "a", "task_id": "m1"}, {"prompt": "b"}, bad, {"prompt": "d"}])
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0


def test_an_unknown_dependency_leaves_no_task(conn):
    """A task with an unknown dependency is not stored at all, not even without its links."""
    before = counts(conn)
    with pytest.raises(ForeignKeyError):
        tasks.create(conn, "p", task_id="lonely", dependencies=["ghost"])
    assert counts(conn) == before
    with pytest.raises(NotFoundError):
        tasks.get(conn, "lonely")


@pytest.mark.parametrize("lookup", [tasks.get, tasks.get_with_session])
@pytest.mark.parametrize("task_id, error", [("missing", NotFoundError), ("'; DROP TABLE tasks; --", NotFoundError),
                                            ("", ValidationError), (None, ValidationError)])
def test_get_unknown_id_raises_not_found(conn, lookup, task_id, error):
    """An id matching no task raises NotFoundError, one no task can have (None, "") ValidationError, naming it."""
    tasks.create(conn, "p")
    with pytest.raises(error) as caught:
        lookup(conn, task_id)
    assert "tasks" in str(caught.value) and repr(task_id) in str(caught.value)


def test_get_with_session_joins_the_session(conn):
    """get_with_session returns the task with its session decoded, or None without one."""
    session = sessions.create(conn, "app", "user", state={"k": [1]})
    linked = tasks.create(conn, "linked", session_id=session["id"])
    alone = tasks.create(conn, "alone")
    found = tasks.get_with_session(conn, linked["id"])
    assert found.pop("session") == sessions.get(conn, session["id"])
    assert found == tasks.get(conn, linked["id"])
    assert tasks.get_with_session(conn, alone["id"])["session"] is None
    sessions.delete(conn, session["id"])
    unlinked = tasks.get_with_session(conn, linked["id"])
    assert unlinked["session"] is None and unlinked["session_id"] is None


# --- list -----------------------------------------------------------------------------------


def test_list_by_status_orders_by_priority_then_age(conn):
    """Listing by status returns the most urgent first: priority, then oldest, up to the limit."""
    specs = [(5, 3), (9, 7), (5, 1), (0, 0), (9, 8), (7, 2)]
    ids = [tasks.create(conn, "p", priority=p, submitted_at=at(s))["id"] for p, s in specs]
    in_status(conn, "failed", priority=10)  # another status stays out
    expected = [ids[i] for i in sorted(range(len(specs)), key=lambda i: (-specs[i][0], specs[i][1]))]
    assert [t["id"] for t in tasks.list(conn, status="pending")] == expected
    assert [t["id"] for t in tasks.list(conn, status="pending", limit=2)] == expected[:2]
    assert [t["status"] for t in tasks.list(conn, status="failed")] == ["failed"]
    assert tasks.list(conn, status="cancelled") == []


def test_list_by_session_is_newest_first(conn):
    """Listing a session's tasks returns them newest first and only theirs."""
    session, other = sessions.create(conn, "a", "u"), sessions.create(conn, "b", "u")
    ids = [tasks.create(conn, "p", session_id=session["id"], submitted_at=at(s))["id"] for s in (5, 1, 9)]
    tasks.create(conn, "p", session_id=other["id"], submitted_at=at(3))
    tasks.create(conn, "p", submitted_at=at(4))
    assert [t["id"] for t in tasks.list(conn, session_id=session["id"])] == [ids[2], ids[0], ids[1]]
    assert [t["id"] for t in tasks.list(conn, session_id=session["id"], limit=1)] == [ids[2]]


def test_list_by_parent_is_oldest_first(conn):
    """Listing a parent's children returns them oldest first and only theirs."""
    parent, other = tasks.create(conn, "parent"), tasks.create(conn, "other")
    ids = [tasks.create(conn, "c", parent_task_id=parent["id"], submitted_at=at(s))["id"] for s in (5, 1, 9)]
    tasks.create(conn, "c", parent_task_id=other["id"], submitted_at=at(2))
    assert [t["id"] for t in tasks.list(conn, parent_task_id=parent["id"])] == [ids[1], ids[0], ids[2]]


def test_list_by_submission_range_is_half_open(conn):
    """A submitted range includes its start, excludes its end, and either end may be open."""
    ids = {s: tasks.create(conn, "p", submitted_at=at(s))["id"] for s in (0, 10, 20, 30)}
    window = tasks.list(conn, submitted_since=at(10), submitted_until=BASE + dt.timedelta(seconds=30))
    assert [t["id"] for t in window] == [ids[10], ids[20]]
    assert [t["id"] for t in tasks.list(conn, submitted_since=at(20))] == [ids[20], ids[30]]
    assert [t["id"] for t in tasks.list(conn, submitted_until=at(10))] == [ids[0]]
    assert [t["id"] for t in tasks.list(conn, submitted_since=at(0), limit=3)] == [ids[0], ids[10], ids[20]]


@pytest.mark.parametrize("kwargs, fragments", [
    ({}, ["exactly one", "none"]),
    ({"status": "pending", "session_id": "s"}, ["exactly one", "status, session_id"]),
    ({"parent_task_id": "p", "submitted_since": at(0)}, ["parent_task_id, submitted"]),
    ({"status": "done"}, ["tasks.status", "'done'"]),
    ({"status": 1}, ["tasks.status", "1"]),
    ({"session_id": 5}, ["tasks.session_id", "5"]),
    ({"parent_task_id": ""}, ["tasks.parent_task_id", "''"]),
    ({"submitted_since": "last week"}, ["tasks.submitted_since", "'last week'"]),
    ({"submitted_until": dt.datetime(2024, 1, 1)}, ["tasks.submitted_until", "time zone"]),
    ({"status": "pending", "limit": 0}, ["tasks.limit", "0"]),
    ({"status": "pending", "limit": "10"}, ["tasks.limit", "'10'"]),
    ({"status": "pending", "limit": True}, ["tasks.limit", "True"]),
])
def test_list_rejects_bad_filters(conn, kwargs, fragments):
    """list() needs exactly one valid filter group and a positive integer limit."""
    with pytest.raises(ValidationError) as caught:
        tasks.list(conn, **kwargs)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_claim_is_one_update_under_begin_immediate(conn):
    """claim_next sends BEGIN IMMEDIATE, one UPDATE through the claim index, and COMMIT."""
    tasks.create(conn, "p")
    with tracing(conn) as sent:
        assert tasks.claim_next(conn) is not None
    assert sent[0] == "BEGIN IMMEDIATE" and sent[-1] == "COMMIT", sent
    # SQLite traces a RETURNING statement once per step; it is still the one statement.
    assert len(set(sent[1:-1])) == 1 and sent[1].startswith("UPDATE tasks SET status = 'running'"), sent
    assert "INDEXED BY idx_tasks_claimable" in sent[1]


# --- the queue ------------------------------------------------------------------------------


def test_claim_next_takes_the_most_urgent_task(conn):
    """claim_next returns pending tasks by priority, then age, each moved to running; then None."""
    specs = [(5, 30), (5, 10), (10, 50), (0, 0), (10, 40), (7, 20)]
    ids = [tasks.create(conn, "p", priority=p, submitted_at=at(s))["id"] for p, s in specs]
    expected = [ids[i] for i in sorted(range(len(specs)), key=lambda i: (-specs[i][0], specs[i][1]))]
    claimed = []
    while (task := tasks.claim_next(conn)) is not None:
        assert task["status"] == "running" and task == tasks.get(conn, task["id"])
        assert task["started_at"] == task["last_updated_at"] and task["started_at"] >= task["submitted_at"]
        claimed.append(task["id"])
    assert claimed == expected


def test_claim_next_filters_by_agent_type(conn):
    """claim_next(agent_type=...) returns only tasks of that type, leaving the others pending."""
    coder = tasks.create(conn, "p", agent_type="coder", priority=1)
    tasks.create(conn, "p", agent_type="writer", priority=9)
    assert tasks.claim_next(conn, agent_type="coder")["id"] == coder["id"]
    assert tasks.claim_next(conn, agent_type="coder") is None
    assert tasks.claim_next(conn, agent_type="nobody") is None
    assert tasks.claim_next(conn)["agent_type"] == "writer"


@pytest.mark.parametrize("agent_type", ["", 5, ["coder"]])
def test_claim_next_rejects_a_bad_agent_type(conn, agent_type):
    """A bad agent_type filter raises ValidationError and claims nothing."""
    task = tasks.create(conn, "p")
    with pytest.raises(ValidationError, match="tasks.agent_type"):
        tasks.claim_next(conn, agent_type=agent_type)
    assert tasks.get(conn, task["id"])["status"] == "pending"


@pytest.mark.parametrize("status", ["running", "completed", "failed", "cancelled"])
def test_claim_next_never_takes_a_task_that_is_not_pending(conn, status):
    """Only pending tasks are claimed: a running, finished or cancelled task is left as it is."""
    task = in_status(conn, status)
    assert tasks.claim_next(conn) is None
    assert tasks.get(conn, task["id"]) == task


def test_dependencies_are_completed_before_the_task_is_claimed(conn):
    """A task is not claimed while any of its dependencies is not completed."""
    first = tasks.create(conn, "first", priority=1, submitted_at=at(1))
    second = tasks.create(conn, "second", priority=1, submitted_at=at(2))
    last = tasks.create(conn, "last", priority=10, submitted_at=at(0), dependencies=[first["id"], second["id"]])
    assert last["unmet_dependencies"] == 2
    running = [tasks.claim_next(conn), tasks.claim_next(conn)]
    assert [task["id"] for task in running] == [first["id"], second["id"]]
    assert tasks.claim_next(conn) is None
    tasks.complete(conn, first["id"], running[0]["lease"])
    assert tasks.get(conn, last["id"])["unmet_dependencies"] == 1
    assert tasks.claim_next(conn) is None
    tasks.complete(conn, second["id"], running[1]["lease"])
    assert tasks.claim_next(conn)["id"] == last["id"]


def test_a_failed_dependency_blocks_until_retried_and_completed(conn):
    """A task whose dependency failed stays blocked, and is claimable once a retry completes it."""
    dep = tasks.create(conn, "dep")
    blocked = tasks.create(conn, "blocked", dependencies=[dep["id"]])
    tasks.fail(conn, dep["id"], tasks.claim_next(conn)["lease"], "boom")
    assert tasks.claim_next(conn) is None
    assert tasks.get(conn, blocked["id"])["status"] == "pending"
    tasks.retry(conn, dep["id"])
    again = tasks.claim_next(conn)
    assert again["id"] == dep["id"]
    assert tasks.claim_next(conn) is None
    tasks.complete(conn, dep["id"], again["lease"])
    assert tasks.claim_next(conn)["id"] == blocked["id"]


def test_claim_skips_blocked_urgent_tasks(conn):
    """When the most urgent pending tasks are blocked, the best claimable one is still found."""
    gate = tasks.create(conn, "gate", priority=0, agent_type="gatekeeper")
    blocked = {tasks.create(conn, "b", priority=10, dependencies=[gate["id"]], submitted_at=at(i))["id"]
               for i in range(300)}
    low = tasks.create(conn, "low", priority=1, submitted_at=at(500))
    lower = tasks.create(conn, "lower", priority=1, submitted_at=at(600), agent_type="gatekeeper")
    assert tasks.claim_next(conn)["id"] == low["id"]
    assert tasks.claim_next(conn, agent_type="gatekeeper")["id"] == lower["id"]
    running = tasks.claim_next(conn)
    assert running["id"] == gate["id"]
    assert tasks.claim_next(conn) is None
    tasks.complete(conn, gate["id"], running["lease"])
    claimed = [tasks.claim_next(conn)["id"] for _ in range(300)]
    assert set(claimed) == blocked and tasks.claim_next(conn) is None
    assert claimed == sorted(blocked, key=lambda i: tasks.get(conn, i)["submitted_at"])


def test_complete_stores_the_result(conn):
    """complete() moves a running task to completed with its result and timestamps."""
    task = in_status(conn, "running")
    done = tasks.complete(conn, task["id"], task["lease"], {"answer": [42, "ok"], "none": None})
    assert done == tasks.get(conn, task["id"])
    assert done["status"] == "completed" and done["result_data"] == {"answer": [42, "ok"], "none": None}
    assert done["completed_at"] == done["last_updated_at"] >= task["started_at"]
    assert done["started_at"] == task["started_at"]
    other = in_status(conn, "running")
    assert tasks.complete(conn, other["id"], other["lease"])["result_data"] is None


def _raw(conn, task_id: str, column: str) -> tuple:
    """Return the column as stored, and its SQLite type: what a decoded row cannot tell apart."""
    # The column name is one of the test's own constants.
    return conn.execute(f"SELECT {column}, typeof({column}) FROM tasks WHERE id = ?", (task_id,)).fetchone()


# JSON values a careless `if not value` would take for None: each must be stored as JSON text.
FALSY_JSON = [0, False, "", [], {}, 0.0]


@pytest.mark.parametrize("finish", ["complete", "complete_and_claim"])
@pytest.mark.parametrize("result", [None, *FALSY_JSON], ids=repr)
def test_a_result_of_none_is_stored_as_sql_null_and_any_other_as_json(conn, finish, result):
    """complete(result=None) stores SQL NULL, not the text 'null'; every other result, falsy ones too, its JSON."""
    task = in_status(conn, "running")
    getattr(tasks, finish)(conn, task["id"], task["lease"], result)
    stored, kind = _raw(conn, task["id"], "result_data")
    if result is None:
        assert (stored, kind) == (None, "null")
    else:
        assert kind == "text" and json.loads(stored) == result and type(json.loads(stored)) is type(result)


@pytest.mark.parametrize("create", ["create", "create_many"])
@pytest.mark.parametrize("input_data", [None, *FALSY_JSON], ids=repr)
def test_input_data_none_is_stored_as_an_empty_object_and_any_other_as_json(conn, create, input_data):
    """No input_data stores the JSON text '{}' and no dependencies '[]'; a falsy input_data is stored as itself."""
    if create == "create":
        task_id = tasks.create(conn, "p", input_data=input_data)["id"]
    else:
        (task_id,) = tasks.create_many(conn, [{"prompt": "p", "input_data": input_data}])
    stored, kind = _raw(conn, task_id, "input_data")
    assert kind == "text" and json.loads(stored) == ({} if input_data is None else input_data)
    assert type(json.loads(stored)) is (dict if input_data is None else type(input_data))
    assert _raw(conn, task_id, "dependencies") == ("[]", "text")
    assert _raw(conn, task_id, "result_data") == (None, "null")


@pytest.mark.parametrize("result", [float("nan"), {"x": float("-inf")}, {1, 2}, object()])
def test_complete_rejects_a_result_that_is_not_json(conn, result):
    """A result that is not JSON raises ValidationError and the task stays running."""
    task = in_status(conn, "running")
    with pytest.raises(ValidationError, match="tasks.result_data"):
        tasks.complete(conn, task["id"], task["lease"], result)
    assert tasks.get(conn, task["id"]) == task


def test_fail_stores_the_error(conn):
    """fail() moves a running task to failed with its message and completed_at."""
    task = in_status(conn, "running")
    failed = tasks.fail(conn, task["id"], task["lease"], "boom: it's \"broken\"")
    assert failed == tasks.get(conn, task["id"])
    assert failed["status"] == "failed" and failed["error_message"] == "boom: it's \"broken\""
    assert failed["completed_at"] == failed["last_updated_at"]


@pytest.mark.parametrize("message", ["", None, 42])
def test_fail_needs_a_message(conn, message):
    """fail() without a non-empty message raises ValidationError and changes nothing."""
    task = in_status(conn, "running")
    with pytest.raises(ValidationError, match="tasks.error_message"):
        tasks.fail(conn, task["id"], task["lease"], message)
    assert tasks.get(conn, task["id"]) == task


@pytest.mark.parametrize("status", ["pending", "running"])
def test_cancel(conn, status):
    """cancel() moves a pending or running task to cancelled with completed_at set."""
    task = in_status(conn, status)
    cancelled = tasks.cancel(conn, task["id"])
    assert cancelled == tasks.get(conn, task["id"])
    assert cancelled["status"] == "cancelled" and cancelled["completed_at"] == cancelled["last_updated_at"]


def test_retry_until_the_retries_are_used_up(conn):
    """retry() requeues a failed task with retry_count + 1, until max_retries is reached."""
    task = tasks.create(conn, "p", max_retries=2)
    for attempt in (1, 2):
        tasks.fail(conn, task["id"], tasks.claim_next(conn)["lease"], f"attempt {attempt}")
        again = tasks.retry(conn, task["id"])
        assert again == tasks.get(conn, task["id"])
        assert (again["status"], again["retry_count"]) == ("pending", attempt)
        assert again["started_at"] is None and again["completed_at"] is None
    failed = tasks.fail(conn, task["id"], tasks.claim_next(conn)["lease"], "final")
    with pytest.raises(TransitionError) as caught:
        tasks.retry(conn, task["id"])
    assert str(caught.value) == f"tasks: cannot retry task {task['id']!r}: retries are used up (2 of 2)"
    assert tasks.get(conn, task["id"]) == failed


def test_retry_with_no_retries_allowed(conn):
    """A task with max_retries=0 cannot be retried."""
    task = in_status(conn, "failed", max_retries=0)
    with pytest.raises(TransitionError, match="retries are used up"):
        tasks.retry(conn, task["id"])
    assert tasks.get(conn, task["id"]) == task


def test_heartbeat_moves_last_updated_at(conn):
    """heartbeat() touches a running task's last_updated_at and nothing else."""
    task = in_status(conn, "running")
    conn.execute("UPDATE tasks SET last_updated_at = ? WHERE id = ?", (at(0), task["id"]))
    beat = tasks.heartbeat(conn, task["id"], task["lease"])
    assert beat == tasks.get(conn, task["id"])
    assert beat["last_updated_at"] > at(0)
    assert {k: v for k, v in beat.items() if k != "last_updated_at"} == {
        k: v for k, v in task.items() if k != "last_updated_at"}


OTHER_LEASE = "f" * 32  # well formed, and never handed out by a claim of these tests


def _lease(task: dict) -> str:
    """Return the task's lease, or another one when it has none (it is not running)."""
    return task["lease"] or OTHER_LEASE


# operation: (call on a task dict, statuses it may start from, the status it leaves)
OPERATIONS = {
    "complete": (lambda conn, task: tasks.complete(conn, task["id"], _lease(task), {"r": 1}), ("running",),
                 "completed"),
    "fail": (lambda conn, task: tasks.fail(conn, task["id"], _lease(task), "boom"), ("running",), "failed"),
    "release": (lambda conn, task: tasks.release(conn, task["id"], _lease(task)), ("running",), "pending"),
    "heartbeat": (lambda conn, task: tasks.heartbeat(conn, task["id"], _lease(task)), ("running",), "running"),
    "cancel": (lambda conn, task: tasks.cancel(conn, task["id"]), ("pending", "running"), "cancelled"),
    "retry": (lambda conn, task: tasks.retry(conn, task["id"]), ("failed",), "pending"),
}
OWNER_OPERATIONS = ("complete", "fail", "release", "heartbeat")
# What a LeaseLostError says of a task in each status.
LOST_BECAUSE = {
    "pending": "it went back to pending at ",
    "running": "it has been running under another lease since ",
    "completed": "it was completed at ",
    "failed": "it failed at ",
    "cancelled": "it was cancelled at ",
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("status", tasks.STATUSES)
def test_every_transition_is_allowed_or_refused_without_change(conn, status, operation):
    """Each operation works from its allowed statuses; from any other it raises TransitionError, changing nothing.

    The owner's operations raise LeaseLostError, saying what became of the task.
    """
    run, allowed, target = OPERATIONS[operation]
    task = in_status(conn, status)
    dependent = tasks.create(conn, "dependent", dependencies=[task["id"]]) if status != "cancelled" else None
    before = counts(conn)
    if status in allowed:
        assert run(conn, task)["status"] == target
        return
    error = LeaseLostError if operation in OWNER_OPERATIONS else TransitionError
    with pytest.raises(error) as caught:
        run(conn, task)
    assert type(caught.value) is error
    if error is LeaseLostError:
        assert str(caught.value).startswith(
            f"tasks: cannot {operation} task {task['id']!r} with lease {_lease(task)!r}: that lease is no longer"
            f" the task's: {LOST_BECAUSE[status]}")
    else:
        must = " or ".join(repr(s) for s in allowed)
        assert str(caught.value) == (
            f"tasks: cannot {operation} task {task['id']!r}: its status is {status!r}, must be {must}")
    assert tasks.get(conn, task["id"]) == task
    assert dependent is None or tasks.get(conn, dependent["id"]) == dependent
    assert counts(conn) == before


@pytest.mark.parametrize("operation", OPERATIONS)
def test_operations_on_an_unknown_task_raise_not_found(conn, operation):
    """Every status change on an id that does not exist raises NotFoundError."""
    tasks.create(conn, "p")
    before = counts(conn)
    with pytest.raises(NotFoundError, match="'ghost'"):
        OPERATIONS[operation][0](conn, {"id": "ghost", "lease": None})
    assert counts(conn) == before


@pytest.mark.parametrize("operation", OWNER_OPERATIONS)
@pytest.mark.parametrize("status", [s for s in tasks.STATUSES if s != "running"])
def test_an_owners_call_changes_only_a_running_task_even_with_its_lease(conn, status, operation):
    """An owner's call on a task that is not running is refused even when its row still names the lease."""
    task = in_status(conn, status)
    # No call of the package leaves a lease on a task that is not running: a raw write does.
    conn.execute("UPDATE tasks SET lease = ? WHERE id = ?", (OTHER_LEASE, task["id"]))
    planted = tasks.get(conn, task["id"])
    with pytest.raises(LeaseLostError, match=LOST_BECAUSE[status]):
        OPERATIONS[operation][0](conn, planted)
    assert tasks.get(conn, task["id"]) == planted


STAMPING = {**OPERATIONS, "force_release": (lambda conn, task: tasks.force_release(conn, task["id"]), ("running",),
                                             "pending")}


@pytest.mark.parametrize("operation", STAMPING)
def test_every_status_change_stamps_last_updated_at(conn, operation):
    """Every allowed change sets last_updated_at to its moment, and completed_at to the same when it ends the task."""
    run, allowed, target = STAMPING[operation]
    task = in_status(conn, allowed[-1])
    conn.execute("UPDATE tasks SET submitted_at = ?, last_updated_at = ? WHERE id = ?", (at(0), at(0), task["id"]))
    changed = run(conn, task)
    assert changed["last_updated_at"] > at(0)
    if target in ("completed", "failed", "cancelled"):
        assert changed["completed_at"] == changed["last_updated_at"]


def test_a_refusal_reads_the_status_inside_the_same_transaction(conn):
    """The status a refusal reports is read under the same write lock as the refused UPDATE."""
    task = in_status(conn, "pending")
    with tracing(conn) as sent:
        with pytest.raises(TransitionError):
            tasks.complete(conn, task["id"], OTHER_LEASE)
    lookup = next(i for i, s in enumerate(sent) if s.startswith("SELECT") and "FROM tasks WHERE id" in s)
    assert sent[0] == "BEGIN IMMEDIATE" and sent[-1] == "ROLLBACK" and 0 < lookup < len(sent) - 1, sent


# --- requeue_stale --------------------------------------------------------------------------


def _stale_moment(task: dict, extra_ms: int = 1) -> dt.datetime:
    """Return the moment `extra_ms` after the task's timeout ran out."""
    last = dt.datetime.fromisoformat(task["last_updated_at"].replace("Z", "+00:00"))
    return last + dt.timedelta(seconds=task["max_execution_timeout_seconds"], milliseconds=extra_ms)


def test_requeue_stale_counts_retries_then_fails(conn):
    """Stale running tasks go back to pending with retry_count + 1, then fail with a clear message."""
    task = tasks.create(conn, "slow", max_retries=2, max_execution_timeout_seconds=60)
    for attempt in (1, 2):
        running = tasks.claim_next(conn)
        assert tasks.requeue_stale(conn, now=_stale_moment(running, extra_ms=0)) == []
        moment = _stale_moment(running)
        [requeued] = tasks.requeue_stale(conn, now=moment)
        assert requeued == tasks.get(conn, task["id"])
        assert (requeued["status"], requeued["retry_count"]) == ("pending", attempt)
        assert requeued["started_at"] is None and requeued["completed_at"] is None
        assert requeued["error_message"] is None and requeued["lease"] is None  # no timeout message yet
        assert requeued["last_updated_at"] == format_datetime(moment)
    running = tasks.claim_next(conn)
    moment = format_datetime(_stale_moment(running, extra_ms=5000))
    [failed] = tasks.requeue_stale(conn, now=moment)
    assert failed["status"] == "failed" and failed["retry_count"] == 2
    assert failed["error_message"] == "timed out after 60 s without an update; 2 of 2 retries used"
    assert failed["completed_at"] == failed["last_updated_at"] == moment
    assert failed["started_at"] == running["started_at"]
    assert tasks.requeue_stale(conn, now=FUTURE) == []


def test_requeue_stale_with_retries_left_keeps_the_error_message(conn):
    """A stale task sent back to pending keeps the error_message it had (an earlier failure's), as retry() does."""
    task = tasks.create(conn, "p", max_retries=3)
    tasks.fail(conn, task["id"], tasks.claim_next(conn)["lease"], "first failure")
    tasks.retry(conn, task["id"])
    running = tasks.claim_next(conn)
    [requeued] = tasks.requeue_stale(conn, now=_stale_moment(running))
    assert (requeued["status"], requeued["retry_count"], requeued["error_message"]) == ("pending", 2, "first failure")


def test_requeue_stale_leaves_fresh_and_idle_tasks_alone(conn):
    """Only running tasks past their own timeout are requeued; fresh running and other tasks stay."""
    short = in_status(conn, "running", max_execution_timeout_seconds=10)
    long = in_status(conn, "running", max_execution_timeout_seconds=3600)
    others = [in_status(conn, s, max_execution_timeout_seconds=10)
              for s in ("completed", "failed", "cancelled", "pending")]
    moment = _stale_moment(short, extra_ms=60_000)  # a minute past the short timeout, an hour before the long
    assert [t["id"] for t in tasks.requeue_stale(conn, now=moment.isoformat())] == [short["id"]]
    assert tasks.get(conn, long["id"]) == long
    assert [tasks.get(conn, t["id"]) for t in others] == others


def test_heartbeat_keeps_a_task_from_being_requeued(conn):
    """A heartbeat restarts the timeout, so long work is not requeued."""
    task = in_status(conn, "running", max_execution_timeout_seconds=60)
    conn.execute("UPDATE tasks SET last_updated_at = ? WHERE id = ?", (at(0), task["id"]))
    assert len(tasks.requeue_stale(conn, now=at(61))) == 1
    task = tasks.claim_next(conn)
    conn.execute("UPDATE tasks SET last_updated_at = ? WHERE id = ?", (at(0), task["id"]))
    tasks.heartbeat(conn, task["id"], task["lease"])
    assert tasks.requeue_stale(conn, now=at(61)) == []
    assert tasks.get(conn, task["id"])["status"] == "running"


def test_requeue_stale_defaults_to_the_current_time(conn):
    """Without `now`, requeue_stale measures from the current time."""
    task = in_status(conn, "running", max_execution_timeout_seconds=60)
    assert tasks.requeue_stale(conn) == []
    conn.execute("UPDATE tasks SET last_updated_at = ? WHERE id = ?", (at(0), task["id"]))
    assert [t["id"] for t in tasks.requeue_stale(conn)] == [task["id"]]


@pytest.mark.parametrize("now", ["soon", dt.datetime(2024, 1, 1), 0])
def test_requeue_stale_rejects_a_bad_now(conn, now):
    """A `now` that is not an aware moment raises ValidationError and changes nothing."""
    task = in_status(conn, "running", max_execution_timeout_seconds=1)
    with pytest.raises(ValidationError, match="tasks.now"):
        tasks.requeue_stale(conn, now=now)
    assert tasks.get(conn, task["id"]) == task


# --- leases: the owner's calls --------------------------------------------------------------


def test_every_claim_starts_a_run_with_a_new_lease(conn):
    """Each claim hands out a new lease, kept on the task while it runs and cleared when the run ends."""
    task = tasks.create(conn, "p")
    first = tasks.claim_next(conn)
    assert re.fullmatch(r"[0-9a-f]{32}", first["lease"]) and tasks.get(conn, task["id"])["lease"] == first["lease"]
    assert tasks.release(conn, task["id"], first["lease"])["lease"] is None
    second = tasks.claim_next(conn)
    assert second["id"] == task["id"] and second["lease"] not in (None, first["lease"])
    assert tasks.complete(conn, task["id"], second["lease"])["lease"] is None


def test_a_stale_worker_changes_nothing_once_the_task_runs_again(conn):
    """After a requeue and a new claim, every call of the first owner raises LeaseLostError; the new run stands."""
    tasks.create(conn, "p", max_execution_timeout_seconds=60)
    stale = tasks.claim_next(conn)
    assert [t["id"] for t in tasks.requeue_stale(conn, now=FUTURE)] == [stale["id"]]
    owner = tasks.claim_next(conn)
    calls = {"complete": lambda: tasks.complete(conn, stale["id"], stale["lease"], {"by": "stale"}),
             "fail": lambda: tasks.fail(conn, stale["id"], stale["lease"], "stale"),
             "heartbeat": lambda: tasks.heartbeat(conn, stale["id"], stale["lease"]),
             "release": lambda: tasks.release(conn, stale["id"], stale["lease"])}
    for operation, call in calls.items():
        with pytest.raises(LeaseLostError) as caught:
            call()
        assert str(caught.value) == (
            f"tasks: cannot {operation} task {stale['id']!r} with lease {stale['lease']!r}: that lease is no longer"
            f" the task's: it has been running under another lease since {owner['started_at']}")
        assert tasks.get(conn, owner["id"]) == owner
    done = tasks.complete(conn, owner["id"], owner["lease"], {"by": "owner"})
    assert (done["status"], done["result_data"], done["retry_count"]) == ("completed", {"by": "owner"}, 1)


@pytest.mark.parametrize("end, because", [
    (lambda conn, task: tasks.cancel(conn, task["id"]), "it was cancelled at "),
    (lambda conn, task: tasks.requeue_stale(conn, now=FUTURE), "it went back to pending at "),
    (lambda conn, task: tasks.complete(conn, task["id"], task["lease"]), "it was completed at "),
    (lambda conn, task: tasks.release(conn, task["id"], task["lease"]), "it went back to pending at "),
    (lambda conn, task: tasks.fail(conn, task["id"], task["lease"], "it broke"), "it failed at "),
])
def test_a_run_that_ended_refuses_its_lease_saying_how_it_ended(conn, end, because):
    """Once a run ends (operator or owner), its lease is refused, the message saying what became of the task."""
    task = in_status(conn, "running", max_execution_timeout_seconds=60)
    end(conn, task)
    after = tasks.get(conn, task["id"])
    with pytest.raises(LeaseLostError, match=re.escape(because)) as caught:
        tasks.heartbeat(conn, task["id"], task["lease"])
    assert after["lease"] is None and tasks.get(conn, task["id"]) == after
    if after["status"] == "failed":
        assert str(caught.value).endswith("it broke")


def test_release_hands_the_task_back_in_its_place_without_a_retry(conn):
    """release() puts a running task back to pending with its retries and its place in the queue unchanged."""
    first = tasks.create(conn, "first", priority=9, submitted_at=at(0))
    tasks.create(conn, "second", priority=9, submitted_at=at(1))
    claimed = tasks.claim_next(conn)
    released = tasks.release(conn, first["id"], claimed["lease"])
    assert released == tasks.get(conn, first["id"])
    assert (released["status"], released["retry_count"], released["started_at"]) == ("pending", 0, None)
    assert released["last_updated_at"] >= claimed["started_at"] and released["completed_at"] is None
    assert tasks.claim_next(conn)["id"] == first["id"]


def test_complete_and_claim_is_one_transaction_that_hands_over_the_next_task(conn):
    """complete_and_claim completes and claims the next task (the dependent it unblocked) in one transaction."""
    dep = tasks.create(conn, "dep", priority=1)
    dependent = tasks.create(conn, "dependent", priority=9, dependencies=[dep["id"]])
    tasks.create(conn, "other", priority=0)
    running = tasks.claim_next(conn)
    assert running["id"] == dep["id"]
    with tracing(conn) as sent:
        following = tasks.complete_and_claim(conn, dep["id"], running["lease"], {"ok": 1})
    assert sent[0] == "BEGIN IMMEDIATE" and sent[-1] == "COMMIT" and sent.count("COMMIT") == 1, sent
    assert following["id"] == dependent["id"] and following["status"] == "running" and following["lease"]
    done = tasks.get(conn, dep["id"])
    assert (done["status"], done["result_data"], done["lease"]) == ("completed", {"ok": 1}, None)
    assert tasks.complete_and_claim(conn, following["id"], following["lease"], agent_type="nobody") is None
    assert tasks.get(conn, following["id"])["status"] == "completed"


def test_complete_and_claim_with_a_lost_lease_changes_and_claims_nothing(conn):
    """With a lease that is no longer the task's, complete_and_claim raises LeaseLostError and claims nothing."""
    task = in_status(conn, "running")
    waiting = tasks.create(conn, "waiting")
    tasks.cancel(conn, task["id"])
    before = tasks.get(conn, task["id"])
    with pytest.raises(LeaseLostError, match="it was cancelled at "):
        tasks.complete_and_claim(conn, task["id"], task["lease"], {"late": True})
    assert tasks.get(conn, task["id"]) == before and tasks.get(conn, waiting["id"]) == waiting


# --- no dead ends ---------------------------------------------------------------------------


def _statuses(conn) -> dict[str, tuple[str, str | None]]:
    return {i: (s, m) for i, s, m in conn.execute("SELECT id, status, error_message FROM tasks")}


def test_cancelling_a_task_cancels_a_chain_of_dependents(conn):
    """Cancelling the head of a chain cancels every pending task down the chain, each naming its own dependency."""
    tasks.create(conn, "head", task_id="c0")
    for i in range(1, 5):
        tasks.create(conn, f"link {i}", task_id=f"c{i}", dependencies=[f"c{i - 1}"])
    tasks.create(conn, "unrelated", task_id="free")
    cancelled = tasks.cancel(conn, "c0")
    assert cancelled["status"] == "cancelled" and cancelled["error_message"] is None
    assert _statuses(conn) == {
        "c0": ("cancelled", None),
        **{f"c{i}": ("cancelled", f"cancelled because dependency 'c{i - 1}' was cancelled") for i in range(1, 5)},
        "free": ("pending", None),
    }
    for i in range(1, 5):
        task = tasks.get(conn, f"c{i}")
        assert task["completed_at"] == task["last_updated_at"] == cancelled["completed_at"]


def test_cancelling_a_task_cancels_a_diamond_of_dependents_once(conn):
    """Through a diamond (two paths to one task) every dependent is cancelled once; a task off the paths stays."""
    for task_id, dependencies in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"]), ("y", []),
                                  ("e", ["d", "y"]), ("z", ["y"])):
        tasks.create(conn, task_id, task_id=task_id, dependencies=dependencies)
    changes = conn.total_changes
    tasks.cancel(conn, "a")
    statuses = _statuses(conn)
    assert {i for i, (s, _) in statuses.items() if s == "cancelled"} == {"a", "b", "c", "d", "e"}
    assert statuses["d"][1] == "cancelled because dependency 'b' was cancelled"  # of two causes, the first by id
    assert statuses["e"] == ("cancelled", "cancelled because dependency 'd' was cancelled")
    assert conn.total_changes - changes == 5  # each task written once
    assert tasks.claim_next(conn)["id"] == "y"


def test_a_long_chain_is_cancelled_whole(conn):
    """A chain of 2,000 tasks is cancelled in one statement: no limit of trigger recursion applies."""
    tasks.create_many(conn, [{"prompt": "p", "task_id": "n0"}] + [
        {"prompt": "p", "task_id": f"n{i}", "dependencies": [f"n{i - 1}"]} for i in range(1, 2000)])
    tasks.cancel(conn, "n0")
    assert tasks.counts(conn)["cancelled"] == 2000
    assert tasks.get(conn, "n1999")["error_message"] == "cancelled because dependency 'n1998' was cancelled"


@pytest.mark.parametrize("give_up", ["fail", "requeue_stale"])
def test_failing_for_good_cancels_the_dependents(conn, give_up):
    """A dependency that fails with no retries left (fail(), or requeue_stale giving up) cancels its dependents."""
    task = in_status(conn, "running", max_retries=0, max_execution_timeout_seconds=60)
    child = tasks.create(conn, "child", dependencies=[task["id"]])
    grandchild = tasks.create(conn, "grandchild", dependencies=[child["id"]])
    if give_up == "fail":
        tasks.fail(conn, task["id"], task["lease"], "broken")
    else:
        assert tasks.requeue_stale(conn, now=FUTURE)[0]["status"] == "failed"
    assert _statuses(conn)[child["id"]] == (
        "cancelled", f"cancelled because dependency {task['id']!r} failed with no retries left")
    assert _statuses(conn)[grandchild["id"]] == (
        "cancelled", f"cancelled because dependency {child['id']!r} was cancelled")


@pytest.mark.parametrize("give_up", ["fail", "requeue_stale"])
def test_failing_with_retries_left_leaves_the_dependents_waiting(conn, give_up):
    """A failure that can still be retried cancels nothing: the dependents wait for the retry."""
    task = in_status(conn, "running", max_retries=1, max_execution_timeout_seconds=60)
    child = tasks.create(conn, "child", dependencies=[task["id"]])
    if give_up == "fail":
        tasks.fail(conn, task["id"], task["lease"], "broken")
    else:
        tasks.requeue_stale(conn, now=FUTURE)
    assert tasks.get(conn, child["id"]) == child


def test_the_cascade_passes_only_through_pending_tasks(conn):
    """A dependent that is not pending (here a legacy row running without its dependency) stops the cascade."""
    tasks.create(conn, "root", task_id="root")
    conn.execute("INSERT INTO tasks (id, prompt, status, dependencies) VALUES ('odd', 'p', 'running', '[\"root\"]')")
    tasks.create(conn, "below", task_id="below", dependencies=["odd"])
    tasks.cancel(conn, "root")
    statuses = _statuses(conn)
    assert (statuses["odd"][0], statuses["below"][0]) == ("running", "pending")


def test_the_cascade_ends_on_a_dependency_cycle_a_legacy_database_may_hold(conn):
    """Cancelling into a dependency cycle (only a legacy database can hold one) cancels each task of it, and ends."""
    tasks.create(conn, "root", task_id="root")
    tasks.create(conn, "a", task_id="a", dependencies=["root"])
    tasks.create(conn, "b", task_id="b", dependencies=["a"])
    conn.execute("INSERT INTO task_dependencies (depends_on_task_id, task_id) VALUES ('b', 'a')")  # a waits on b too
    # A cascade going round the cycle for ever is interrupted here, failing the test instead of hanging it.
    budget = iter(range(10_000))
    conn.set_progress_handler(lambda: next(budget, None) is None, 1000)
    try:
        tasks.cancel(conn, "root")
    finally:
        conn.set_progress_handler(None, 0)
    assert {task_id: status for task_id, (status, _) in _statuses(conn).items()} == dict.fromkeys(
        ("root", "a", "b"), "cancelled")


def test_the_cascade_ends_a_lease_a_pending_dependent_still_names(conn):
    """A pending dependent whose row still names a lease (a raw write; no call leaves one) is cancelled without it."""
    tasks.create(conn, "root", task_id="root")
    tasks.create(conn, "waiting", task_id="waiting", dependencies=["root"])
    conn.execute("UPDATE tasks SET lease = ? WHERE id = 'waiting'", (OTHER_LEASE,))
    tasks.cancel(conn, "root")
    assert (tasks.get(conn, "waiting")["status"], tasks.get(conn, "waiting")["lease"]) == ("cancelled", None)


def test_a_cascade_names_the_task_that_ended_when_a_dependent_waited_on_it_directly(conn):
    """A dependent waiting on the ended task and on another doomed one is blamed on the ended task itself."""
    for task_id, dependencies in (("r", []), ("a", ["r"]), ("d", ["a", "r"])):
        tasks.create(conn, task_id, task_id=task_id, dependencies=dependencies)
    tasks.cancel(conn, "r")
    assert tasks.get(conn, "d")["error_message"] == "cancelled because dependency 'r' was cancelled"


def test_the_cascade_reads_by_key(conn):
    """The cascade's plan searches tasks and task_dependencies by key; only its own working set is scanned."""
    plan = abathur_db.explain_query_plan(conn, tasks.CANCEL_DEPENDENTS_SQL, {"id": "t", "how": "", "now": FUTURE})
    scans = [line for line in plan if line.startswith("SCAN")]
    assert scans == ["SCAN doomed", "SCAN doomed", "SCAN blamed"] and plan[0] == "MATERIALIZE blamed", plan
    assert "SEARCH d USING PRIMARY KEY (depends_on_task_id=?)" in plan
    assert "SEARCH tasks USING INDEX sqlite_autoindex_tasks_1 (id=?)" in plan


@pytest.mark.parametrize("create", ["create", "create_many"])
def test_a_dependency_that_can_never_complete_is_refused(conn, create):
    """create() and create_many() refuse a cancelled dependency or one failed with no retries left, storing nothing."""
    cancelled = in_status(conn, "cancelled")
    failed_for_good = in_status(conn, "failed", max_retries=0)
    retryable = in_status(conn, "failed", max_retries=1)
    before = counts(conn)
    for dead, how in ((cancelled, "was cancelled"), (failed_for_good, "failed with no retries left")):
        with pytest.raises(ValidationError) as caught:
            if create == "create":
                tasks.create(conn, "p", dependencies=[retryable["id"], dead["id"]])
            else:
                tasks.create_many(conn, [{"prompt": "p"}, {"prompt": "p", "dependencies": [dead["id"]]}])
        assert str(caught.value) == (
            f"tasks.dependencies: task {dead['id']!r} {how}: a task waiting on it could never run")
        assert counts(conn) == before
    assert tasks.create(conn, "p", dependencies=[retryable["id"]])["unmet_dependencies"] == 1


# --- waiting for work -------------------------------------------------------------------------


def _waiting(connect, nth: int = 2, **options) -> tuple[concurrent.futures.Future, concurrent.futures.Executor]:
    """Start claim_next(**options) on another thread's connection (`connect()`); return it once it waits.

    It waits once it reads PRAGMA data_version the second time; `nth` waits for a later reading.
    """
    waiting = threading.Event()

    def claim():
        conn = connect()
        conn.set_trace_callback(on_data_version(waiting, nth))  # the thread and its connection end with the test
        return tasks.claim_next(conn, **options)

    executor = concurrent.futures.ThreadPoolExecutor(1)
    future = executor.submit(claim)
    assert waiting.wait(10), future.exception(timeout=0) if future.done() else "the claim never started to wait"
    return future, executor


def test_a_commit_of_this_process_wakes_a_waiting_claim(pool):
    """A task created while another thread waits in claim_next(wait=…) is claimed by it, long before the wait ends."""
    future, executor = _waiting(pool.connection, wait=60)
    with executor:
        created = tasks.create(pool.connection(), "arrives")
        claimed = future.result(timeout=10)
    assert claimed["id"] == created["id"] and claimed["status"] == "running"
    assert not _SIGNALS  # the waiter is gone: commits announce nothing any more


def test_a_waiting_claim_holds_no_lock(pool):
    """While a claim waits, other connections write freely; a task of another type leaves it waiting."""
    future, executor = _waiting(pool.connection, agent_type="coder", wait=60)
    with executor:
        conn = pool.connection()
        with transaction(conn):  # the write lock, taken and given back while the claim waits
            tasks.create(conn, "not for it", agent_type="writer")
        assert not future.done()
        tasks.create(conn, "for it", agent_type="coder")
        assert future.result(timeout=10)["prompt"] == "for it"
    assert tasks.counts(conn) == {"pending": 1, "running": 1, "completed": 0, "failed": 0, "cancelled": 0}


def test_one_commit_wakes_every_waiting_claim_and_one_gets_the_task(pool, tmp_path):
    """A task wakes both claims waiting on a file: one claims it, the other waits on; other files' commits wake none."""
    first, first_executor = _waiting(pool.connection, wait=60)
    second, second_executor = _waiting(pool.connection, wait=60)
    with first_executor, second_executor, abathur_db.open(tmp_path / "other.db") as other:
        tasks.create(other.connection(), "elsewhere")
        conn = pool.connection()
        created = tasks.create(conn, "one")
        done, waiting = concurrent.futures.wait([first, second], timeout=10,
                                                return_when=concurrent.futures.FIRST_COMPLETED)
        assert [future.result()["id"] for future in done] == [created["id"]] and len(waiting) == 1
        assert len(_SIGNALS) == 1  # the other still waits on this file's signal
        again = tasks.create(conn, "two")
        assert waiting.pop().result(timeout=10)["id"] == again["id"]
    assert not _SIGNALS


def test_a_forked_child_forgets_the_waits_of_its_parent(pool, monkeypatch):
    """A child forked while a thread of its parent waits has no commit signal left to announce to."""
    # The fork comes once the waiter sleeps on the signal, with no poll due: forked while a
    # thread of the parent is inside SQLite, the child can inherit one of SQLite's mutexes
    # locked, and hang closing the connections it inherited.
    sleeping, wait = threading.Event(), CommitSignal.wait

    def sleep_on_the_signal(signal, seen, timeout):
        sleeping.set()
        return wait(signal, seen, timeout)

    monkeypatch.setattr(CommitSignal, "wait", sleep_on_the_signal)
    monkeypatch.setattr(tasks, "WAIT_POLL_SECONDS", 60)
    future, executor = _waiting(pool.connection, wait=60)
    with executor:
        assert sleeping.wait(10)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's lines run in another process
            os.write(write, str(len(_SIGNALS)).encode())
            os._exit(0)
        os.close(write)
        assert os.read(read, 10) == b"0" and os.waitpid(child, 0)[1] == 0
        os.close(read)
        assert len(_SIGNALS) == 1
        tasks.create(pool.connection(), "ends the wait")
        assert future.result(timeout=10) is not None


def test_a_wait_for_a_commit_is_no_condition_wait_a_signal_could_leave_unlocked(monkeypatch):
    """The commit signal a waiting claim sleeps on uses no Condition, whose wait a signal can end with its lock
    released (see SignalledCondition): a commit wakes it, and none lets its time pass."""
    with monkeypatch.context() as patched:  # for the signal's own parts only, not Thread's
        patched.setattr(threading, "Condition", SignalledCondition)
        signal = CommitSignal()
    started = time.monotonic()
    assert signal.wait(0, 0.1) is False and time.monotonic() - started >= 0.1 and not signal._gates
    woken = []
    waiter = threading.Thread(target=lambda: woken.append(signal.wait(0, 10)))
    waiter.start()
    assert until(lambda: signal._gates)
    signal.announce()
    waiter.join(10)
    assert woken == [True] and signal.wait(0, 10) is True and not signal._gates


def test_a_wait_ends_with_none_and_does_not_poll_busily(conn):
    """claim_next(wait=…) on an empty queue returns None after the wait, reading data_version once a poll interval."""
    started = time.monotonic()
    with tracing(conn) as sent:
        assert tasks.claim_next(conn, wait=0.3) is None
    assert time.monotonic() - started >= 0.3
    assert sum(s.startswith("UPDATE") for s in sent) == 1  # the one claim before waiting; nothing to peek at since
    assert sent.count("PRAGMA data_version") <= 0.3 / tasks.WAIT_POLL_SECONDS + 3


def test_a_plain_connection_waits_for_commits_of_other_connections(pool, db_path):
    """A plain sqlite3 connection's wait sees another connection's commit through PRAGMA data_version."""
    plain = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    try:
        future, executor = _waiting(lambda: plain, 3, wait=60)  # the third reading follows a pause
        with executor:
            created = tasks.create(pool.connection(), "arrives")
            assert future.result(timeout=10)["id"] == created["id"]
    finally:
        plain.close()


def test_closing_the_pool_ends_a_wait(pool):
    """pool.close() from another thread ends a waiting claim with ConfigurationError, well before its wait is over."""
    future, executor = _waiting(pool.connection, wait=60)
    with executor:
        pool.close()
        with pytest.raises(ConfigurationError, match="closed"):
            future.result(timeout=10)
    assert not _SIGNALS


def test_a_wait_inside_a_transaction_block_is_refused(conn):
    """Waiting inside a transaction block would hold the write lock: ConfigurationError; wait=0 just claims."""
    task = tasks.create(conn, "p")
    with transaction(conn):
        with pytest.raises(ConfigurationError, match="would hold the write lock"):
            tasks.claim_next(conn, wait=1)
        assert tasks.claim_next(conn, wait=0)["id"] == task["id"]


def test_a_status_this_version_does_not_know_refuses_an_owners_call(conn):
    """An owner's call on a task in a status this version does not know raises LeaseLostError naming the status."""
    _legacy(conn, f"INSERT INTO tasks (id, prompt, status, lease) VALUES ('odd', 'p', 'paused', '{OTHER_LEASE}')")
    with pytest.raises(LeaseLostError, match="its status is 'paused'"):
        tasks.complete(conn, "odd", OTHER_LEASE)


# --- seeing without touching ------------------------------------------------------------------


def test_counts_has_every_status(conn):
    """counts() returns each status with its number of tasks, 0 included; an unknown stored status is left out."""
    assert tasks.counts(conn) == dict.fromkeys(tasks.STATUSES, 0)
    for status in ("completed", "completed", "completed", "failed", "cancelled", "running", "pending", "pending"):
        in_status(conn, status)
    _legacy(conn, "INSERT INTO tasks (id, prompt, status) VALUES ('odd', 'p', 'paused')")
    assert tasks.counts(conn) == {"pending": 2, "running": 1, "completed": 3, "failed": 1, "cancelled": 1}


def test_stale_lists_what_requeue_stale_would_take_back_and_changes_nothing(conn):
    """stale() returns the running tasks past their deadline, earliest deadline first, in pages, writing nothing."""
    running = [in_status(conn, "running", max_execution_timeout_seconds=seconds) for seconds in (30, 10, 20, 3600)]
    for task in running:
        conn.execute("UPDATE tasks SET last_updated_at = ? WHERE id = ?", (at(0), task["id"]))
    in_status(conn, "pending", max_execution_timeout_seconds=1)
    changes = conn.total_changes
    expected = [running[1]["id"], running[2]["id"], running[0]["id"]]
    assert [t["id"] for t in tasks.stale(conn, now=at(100))] == expected
    first = tasks.stale(conn, now=at(100), limit=2)
    assert [t["id"] for t in first] == expected[:2]
    assert [t["id"] for t in tasks.stale(conn, now=at(100), limit=2, after=first[-1])] == expected[2:]
    assert [t["id"] for t in tasks.stale(conn, now=at(25))] == expected[:2]
    assert tasks.stale(conn, now=at(10)) == []  # a deadline reached exactly is not yet past
    assert [t["id"] for t in tasks.stale(conn, now=at(10.001))] == expected[:1]
    assert tasks.stale(conn, now=at(5)) == [] and conn.total_changes == changes
    assert {t["id"] for t in tasks.requeue_stale(conn, now=at(100))} == set(expected)
    assert tasks.stale(conn, now=at(100)) == []


def test_stale_refuses_a_row_whose_deadline_never_comes(conn):
    """A page after a row whose timeout runs past the calendar raises ValidationError: no stale task has it."""
    task = in_status(conn, "running")
    with pytest.raises(ValidationError, match="never runs out"):
        tasks.stale(conn, after={**task, "max_execution_timeout_seconds": 2**62})


# --- transactions ---------------------------------------------------------------------------


def test_a_failing_call_keeps_the_callers_earlier_writes(conn):
    """A refused call inside a caller's transaction undoes only itself (a savepoint), not the caller's work."""
    with transaction(conn):
        first = tasks.create(conn, "first")
        with pytest.raises(ForeignKeyError):
            tasks.create(conn, "bad", dependencies=[first["id"], "ghost"])
        with pytest.raises(ForeignKeyError):
            tasks.create(conn, "bad", session_id="ghost")
        with pytest.raises(TransitionError):
            tasks.complete(conn, first["id"], OTHER_LEASE)
        second = tasks.create(conn, "second", dependencies=[first["id"]])
    assert counts(conn) == (2, 1)
    assert tasks.get(conn, first["id"])["status"] == "pending"
    assert tasks.get(conn, second["id"])["unmet_dependencies"] == 1


# --- rows that break today's rules (kept by an upgrade) --------------------------------------


def _legacy(conn, sql: str) -> None:
    """Store a row as an upgrade keeps one: its CHECK constraints not enforced."""
    with unchecked(conn):
        conn.execute(sql)


@pytest.mark.parametrize("input_data", ["not json", "[" * 990 + "]" * 990], ids=["not-json", "nested-990-deep"])
@pytest.mark.parametrize("claim", ["claim_next", "claim_next-wait", "complete_and_claim"])
def test_a_claim_fails_a_task_it_cannot_decode_and_claims_the_next(conn, caplog, input_data, claim):
    """A claimed row that cannot be decoded is failed, naming the value, its dependents cancelled, and logged; the
    claim goes on to the next task, so that the row does not stay first in the queue for every claim."""
    tasks.create(conn, "running", priority=10, task_id="running")
    running = tasks.claim_next(conn)
    _legacy(conn, f"INSERT INTO tasks (id, prompt, priority, input_data) VALUES ('bad', 'p', 9, '{input_data}')")
    tasks.create(conn, "waits on bad", task_id="after-bad", dependencies=["bad"])
    tasks.create(conn, "good", task_id="good")
    calls = {"claim_next": lambda: tasks.claim_next(conn), "claim_next-wait": lambda: tasks.claim_next(conn, wait=5),
             "complete_and_claim": lambda: tasks.complete_and_claim(conn, running["id"], running["lease"], "done")}
    with caplog.at_level(logging.WARNING, logger="abathur_db"):
        assert calls[claim]()["id"] == "good"
    status, error = conn.execute("SELECT status, error_message FROM tasks WHERE id = 'bad'").fetchone()
    assert status == "failed" and error.startswith("not claimed: tasks: row id 'bad': input_data holds "), error
    dependent = tasks.get(conn, "after-bad")
    assert dependent["status"] == "cancelled" and "'bad' failed: one of its stored values" in dependent["error_message"]
    assert [r.getMessage()[:39] for r in caplog.records] == ["tasks: failed task 'bad', not claimed: "]
    assert tasks.get(conn, "running")["status"] == ("completed" if claim == "complete_and_claim" else "running")


def test_requeue_stale_fails_a_task_it_cannot_decode_and_takes_back_the_others(conn):
    """A stale task that cannot be decoded is failed, naming the value; the other stale tasks are still taken back."""
    for task_id in ("bad", "good"):
        tasks.create(conn, task_id, task_id=task_id)
        tasks.claim_next(conn)
    _legacy(conn, "UPDATE tasks SET input_data = 'not json' WHERE id = 'bad'")
    assert [task["id"] for task in tasks.requeue_stale(conn, now=FUTURE)] == ["good"]
    status, error = conn.execute("SELECT status, error_message FROM tasks WHERE id = 'bad'").fetchone()
    assert status == "failed" and error.startswith("not requeued: tasks: row id 'bad': input_data holds "), error
    assert tasks.get(conn, "good")["status"] == "pending"


def test_a_claim_inside_a_callers_block_leaves_a_task_it_cannot_decode_pending(conn):
    """Inside the caller's block the claim raises StoredValueError: the block's transaction is gone with it."""
    _legacy(conn, "INSERT INTO tasks (id, prompt, priority, input_data) VALUES ('bad', 'p', 9, 'not json')")
    with pytest.raises(AbathurDBError), transaction(conn):
        with pytest.raises(StoredValueError, match="tasks: row id 'bad': input_data holds "):
            tasks.claim_next(conn)
    assert conn.execute("SELECT status, started_at FROM tasks WHERE id = 'bad'").fetchone() == ("pending", None)


def test_a_status_change_whose_row_cannot_be_decoded_changes_nothing(conn):
    """complete() on a running task whose input cannot be decoded raises StoredValueError and leaves it running."""
    _legacy(conn, "INSERT INTO tasks (id, prompt, status, started_at, input_data, lease)"
                  f" VALUES ('bad', 'p', 'running', '2024-01-01T00:00:00.000Z', '{{oops', '{OTHER_LEASE}')")
    with pytest.raises(StoredValueError, match="input_data holds '{oops'"):
        tasks.complete(conn, "bad", OTHER_LEASE, {"ok": True})
    assert conn.execute("SELECT status, result_data FROM tasks WHERE id = 'bad'").fetchone() == ("running", None)


def test_a_status_this_version_does_not_know_is_read_as_stored_and_refuses_changes(conn):
    """An out-of-enum status comes back as stored; a change from it raises TransitionError naming it."""
    _legacy(conn, "INSERT INTO tasks (id, prompt, status) VALUES ('odd', 'p', 'paused')")
    assert tasks.get(conn, "odd")["status"] == "paused"
    with pytest.raises(TransitionError, match="its status is 'paused'"):
        tasks.cancel(conn, "odd")


def test_a_failed_decode_inside_a_callers_block_rolls_the_whole_block_back(conn):
    """Inside a caller's block a row that cannot be decoded ends the block's transaction: nothing of it is kept."""
    _legacy(conn, "INSERT INTO tasks (id, prompt, priority, input_data) VALUES ('bad', 'p', 9, 'not json')")
    with pytest.raises(AbathurDBError, match="rolled back before its block ended"):
        with transaction(conn):
            tasks.create(conn, "written first", task_id="first")
            with pytest.raises(StoredValueError):
                tasks.claim_next(conn)
    assert conn.execute("SELECT id, status FROM tasks").fetchall() == [("bad", "pending")]


# --- a random walk against a model of the queue ---------------------------------------------


class QueueModel:
    """What the queue should hold: per task its status, retries, lease, priority, age and dependencies."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict] = {}

    def claimable(self) -> str | None:
        """Return the id claim_next must return next, or None."""
        ready = [t for t in self.tasks.values() if t["status"] == "pending"
                 and all(self.tasks[d]["status"] == "completed" for d in t["deps"])]
        return min(ready, key=lambda t: (-t["priority"], t["submitted_at"]))["id"] if ready else None

    def dead(self, task_id: str) -> bool:
        """Tell whether the task can never complete: cancelled, or failed with no retries left."""
        task = self.tasks[task_id]
        return task["status"] == "cancelled" or (
            task["status"] == "failed" and task["retry_count"] >= task["max_retries"])

    def end(self, task_id: str, status: str) -> None:
        """Move a task to `status`; if it can never complete, cancel the pending tasks waiting on it, transitively."""
        self.tasks[task_id].update(status=status, lease=None)
        ended = [task_id] if self.dead(task_id) else []
        while ended:
            cause = ended.pop()
            for task in self.tasks.values():
                if cause in task["deps"] and task["status"] == "pending":
                    task["status"] = "cancelled"
                    ended.append(task["id"])

    def state(self) -> dict[str, tuple]:
        """Return (status, retry_count, unmet dependencies, lease) per task id."""
        return {i: (t["status"], t["retry_count"],
                    sum(self.tasks[d]["status"] != "completed" for d in t["deps"]), t["lease"])
                for i, t in self.tasks.items()}


def _random_step(conn, rng: random.Random, model: QueueModel, number: int) -> str:
    """Apply one random operation to the database and the model; return a description."""
    ids = sorted(model.tasks)
    operation = rng.choice(["create"] * 3 + ["claim"] * 3 + ["complete"] * 2
                           + ["fail", "retry", "cancel", "heartbeat", "release", "requeue"])
    if operation == "create" or not ids:
        task_id = f"t{number}"
        spec = {"priority": rng.randint(0, 3), "submitted_at": at(rng.randrange(10**6) + number / 1000),
                "deps": rng.sample(ids, k=min(len(ids), rng.choice([0, 0, 1, 2]))),
                "max_retries": rng.randint(0, 2)}
        create = lambda: tasks.create(  # noqa: E731
            conn, "p", task_id=task_id, priority=spec["priority"], submitted_at=spec["submitted_at"],
            dependencies=spec["deps"], max_retries=spec["max_retries"])
        if any(model.dead(d) for d in spec["deps"]):
            with pytest.raises(ValidationError, match="could never run"):
                create()
            return f"create {task_id} refused: {spec}"
        create()
        model.tasks[task_id] = {"id": task_id, "status": "pending", "retry_count": 0, "lease": None,
                                "old_leases": [], **spec}
        return f"create {task_id} {spec}"
    if operation == "claim":
        expected = model.claimable()
        claimed = tasks.claim_next(conn)
        assert (claimed and claimed["id"]) == (expected or None), f"claimed {claimed and claimed['id']}"
        if expected:
            task = model.tasks[expected]
            task.update(status="running", lease=claimed["lease"])
            task["old_leases"].append(claimed["lease"])
        return f"claim -> {expected}"
    if operation == "requeue":
        now = rng.choice([PAST, FUTURE])
        expected = sorted(i for i, t in model.tasks.items() if t["status"] == "running") if now == FUTURE else []
        assert sorted(t["id"] for t in tasks.requeue_stale(conn, now=now)) == expected
        for task_id in expected:
            task = model.tasks[task_id]
            if task["retry_count"] < task["max_retries"]:
                task.update(status="pending", retry_count=task["retry_count"] + 1, lease=None)
            else:
                model.end(task_id, "failed")
        return f"requeue at {now} -> {expected}"
    task_id = rng.choice(ids)
    task = model.tasks[task_id]
    run, allowed, target = OPERATIONS[operation]
    # An owner's call carries the current lease, or one of an earlier run of the task (a stale worker's).
    lease = task["lease"] if rng.random() < 0.75 else rng.choice(task["old_leases"] or [OTHER_LEASE])
    legal = task["status"] in allowed and not (
        operation == "retry" and task["retry_count"] >= task["max_retries"]) and not (
        operation in OWNER_OPERATIONS and lease != task["lease"])
    if legal:
        assert run(conn, {"id": task_id, "lease": lease})["status"] == target
        task["retry_count"] += operation == "retry"
        model.end(task_id, target) if target != "running" else None
    else:
        with pytest.raises(LeaseLostError if operation in OWNER_OPERATIONS else TransitionError):
            run(conn, {"id": task_id, "lease": lease})
    return f"{operation} {task_id} from {task['status']} legal={legal}"


@pytest.mark.parametrize("seed", range(20))
def test_random_operations_match_a_model_of_the_queue(conn, seed):
    """Random steps of owners (stale ones too) and operators keep the database equal to the model."""
    rng = random.Random(seed)
    model = QueueModel()
    history: list[str] = []
    for number in range(150):
        try:
            history.append(_random_step(conn, rng, model, number))
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, step {number}: {exc}; last steps: {history[-5:]}") from exc
        stored = {i: tuple(row) for i, *row in conn.execute(
            "SELECT id, status, retry_count, unmet_dependencies, lease FROM tasks")}
        assert stored == model.state(), f"seed {seed}, step {number}: last steps: {history[-5:]}"


# --- the operator's reads and release -------------------------------------------------------


def test_oldest_pending_is_the_first_submitted_whatever_its_priority_or_dependencies(conn):
    """oldest_pending() returns the pending task submitted first, blocked or not; None when none is pending."""
    assert tasks.oldest_pending(conn) is None
    ancient = tasks.create(conn, "ancient", priority=0, submitted_at=at(0))
    tasks.claim_next(conn)  # running: no longer pending
    blocker = tasks.create(conn, "blocker", priority=9, submitted_at=at(30))
    blocked = tasks.create(conn, "blocked", priority=2, submitted_at=at(10), dependencies=[blocker["id"]])
    tasks.create(conn, "urgent", priority=10, submitted_at=at(20))
    assert tasks.oldest_pending(conn) == tasks.get(conn, blocked["id"])
    assert tasks.get(conn, ancient["id"])["status"] == "running"
    tasks.cancel(conn, blocked["id"])
    assert tasks.oldest_pending(conn)["prompt"] == "urgent"


def test_oldest_pending_reads_one_index_and_sorts_nothing(conn):
    """oldest_pending's plan searches idx_tasks_status_priority for pending tasks: no table scan, no sort."""
    plan = abathur_db.explain_query_plan(conn, tasks.OLDEST_PENDING_SQL)
    assert any("COVERING INDEX idx_tasks_status_priority (status=?)" in line for line in plan), plan
    assert not any(line.startswith("SCAN tasks") or "TEMP B-TREE" in line for line in plan), plan


def test_force_release_ends_any_run_without_a_retry(conn, caplog):
    """force_release() puts a running task back to pending, keeps its retries, loses its lease, logs at INFO."""
    task = tasks.create(conn, "work", submitted_at=at(0))
    claimed = tasks.claim_next(conn)
    with caplog.at_level(logging.INFO, logger="abathur_db"):
        released = tasks.force_release(conn, task["id"])
    assert [record.getMessage() for record in caplog.records] == [
        f"tasks: force_release sent task {task['id']!r} back to pending, its lease ended"]
    assert released == tasks.get(conn, task["id"])
    assert (released["status"], released["retry_count"], released["lease"], released["started_at"]) == (
        "pending", 0, None, None)
    with pytest.raises(LeaseLostError, match="went back to pending"):
        tasks.complete(conn, task["id"], claimed["lease"])
    assert tasks.claim_next(conn)["id"] == task["id"]


@pytest.mark.parametrize("status", ["pending", "completed", "failed", "cancelled"])
def test_force_release_refuses_a_task_that_is_not_running(conn, status):
    """force_release() of a task in any other status raises TransitionError and changes nothing."""
    task = in_status(conn, status)
    before = tasks.get(conn, task["id"])
    with pytest.raises(TransitionError, match=f"its status is '{status}', must be 'running'"):
        tasks.force_release(conn, task["id"])
    assert tasks.get(conn, task["id"]) == before


def test_force_release_of_an_unknown_task_raises_not_found(conn):
    """force_release() names a task id that does not exist."""
    with pytest.raises(NotFoundError, match="no task with id 'nope'"):
        tasks.force_release(conn, "nope")
