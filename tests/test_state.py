"""state: set (upsert), get, delete."""

from __future__ import annotations

import re
import sqlite3

import pytest

from abathur_db import state
from abathur_db.errors import ForeignKeyError, ValidationError

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Awkward values (text, falsy, 1 MB) are stored verbatim in test_bad_input's table.
VALUES = [
    pytest.param({"a": [1, 2.5, None, True]}, id="object"),
    pytest.param(None, id="null"),
]


def count(conn) -> int:
    return conn.execute("SELECT count(*) FROM state").fetchone()[0]


@pytest.fixture
def task(make_task):
    return make_task("t1")


@pytest.mark.parametrize("value", VALUES)
def test_set_then_get_returns_the_value_verbatim(conn, task, value):
    """set returns the stored row and get gives back the same value, JSON decoded."""
    row = state.set(conn, task, "k", value)
    assert row["value"] == value and row["task_id"] == task and row["key"] == "k"
    assert TIMESTAMP.fullmatch(row["created_at"]) and row["updated_at"] == row["created_at"]
    assert state.get(conn, task, "k", default="absent") == value


def test_a_key_finds_only_its_own_value(conn, task):
    """Keys that differ by a suffix or by case, or hold LIKE or GLOB wildcards, each address their own value."""
    keys = ["k", "k!", "k%", "k_", "k*", "K"]
    for number, key in enumerate(keys):
        state.set(conn, task, key, number)
    assert [state.get(conn, task, key) for key in keys] == list(range(len(keys)))


def test_set_again_replaces_the_value_and_keeps_created_at(conn, task):
    """A second set on the same key updates value and updated_at, keeping the row, id and created_at."""
    first = state.set(conn, task, "k", {"v": 1})
    conn.execute("UPDATE state SET created_at = ?, updated_at = ?",
                 ("2020-01-01T00:00:00.000Z", "2020-01-02T00:00:00.000Z"))
    second = state.set(conn, task, "k", [2])
    assert count(conn) == 1
    assert second["id"] == first["id"] and second["value"] == [2]
    assert second["created_at"] == "2020-01-01T00:00:00.000Z"
    assert second["updated_at"] > "2020-01-02T00:00:00.000Z"
    assert state.get(conn, task, "k") == [2]


def test_keys_are_per_task(conn, make_task):
    """The same key in two tasks holds two values; deleting one leaves the other."""
    t1, t2 = make_task("t1"), make_task("t2")
    state.set(conn, t1, "k", "one")
    state.set(conn, t2, "k", "two")
    assert (state.get(conn, t1, "k"), state.get(conn, t2, "k")) == ("one", "two")
    assert state.delete(conn, t1, "k") is True
    assert (state.get(conn, t1, "k"), state.get(conn, t2, "k")) == (None, "two")


@pytest.mark.parametrize("task_id, key", [
    pytest.param("t1", "missing", id="missing-key"),
    pytest.param("missing", "k", id="unknown-task"),
])
@pytest.mark.parametrize("default", [None, 0, "fallback", {"d": 1}])
def test_get_returns_the_default_when_missing(conn, task, task_id, key, default):
    """get returns `default` (None unless given) when the task has no such key."""
    state.set(conn, task, "k", "stored")
    assert state.get(conn, task_id, key, default) == default
    assert state.get(conn, task_id, key, default=default) == default


def test_get_distinguishes_a_stored_null_from_a_missing_key(conn, task):
    """A stored JSON null is returned as None, not replaced by the default."""
    state.set(conn, task, "k", None)
    assert state.get(conn, task, "k", "default") is None
    assert conn.execute("SELECT value, typeof(value) FROM state").fetchone() == ("null", "text")


def test_delete_reports_whether_the_key_was_there(conn, task):
    """delete removes the key and returns True, then returns False."""
    state.set(conn, task, "k", 1)
    state.set(conn, task, "other", 2)
    assert state.delete(conn, task, "k") is True
    assert state.delete(conn, task, "k") is False
    assert state.delete(conn, "missing", "k") is False
    assert state.get(conn, task, "k", "gone") == "gone" and state.get(conn, task, "other") == 2


BAD_SETS = [
    pytest.param({"task_id": "missing"}, ForeignKeyError, "task_id", "'missing'", id="unknown-task"),
    pytest.param({"task_id": None}, ValidationError, "task_id", "None", id="none-task"),
    pytest.param({"task_id": 1}, ValidationError, "task_id", "1", id="int-task"),
    pytest.param({"key": ""}, ValidationError, "key", "''", id="empty-key"),
    pytest.param({"key": ("a",)}, ValidationError, "key", "('a',)", id="tuple-key"),
    pytest.param({"value": float("nan")}, ValidationError, "value", "nan", id="json-nan"),
    pytest.param({"value": [float("inf")]}, ValidationError, "value", "inf", id="json-inf"),
    pytest.param({"value": {"x", "y"}}, ValidationError, "value", "set", id="json-set"),
    pytest.param({"value": {1: {2}}}, ValidationError, "value", "{1: {2}}", id="json-nested-set"),
    pytest.param({"value": b"bytes"}, ValidationError, "value", "b'bytes'", id="json-bytes"),
]


@pytest.mark.parametrize("override, error, field, shown", BAD_SETS)
def test_set_rejects_bad_input(conn, task, override, error, field, shown):
    """Bad input raises the specific error naming table, field and value, and changes nothing."""
    state.set(conn, task, "k", "kept")
    args = {"task_id": task, "key": "k", "value": 1, **override}
    before = count(conn)
    with pytest.raises(error) as caught:
        state.set(conn, args["task_id"], args["key"], args["value"])
    assert f"state.{field}" in str(caught.value) and shown in str(caught.value)
    assert count(conn) == before
    assert state.get(conn, task, "k") == "kept"


@pytest.mark.parametrize("function", [state.get, state.delete])
@pytest.mark.parametrize("task_id, key, field", [
    pytest.param(None, "k", "task_id", id="none-task"),
    pytest.param("t1", 5, "key", id="int-key"),
])
def test_get_and_delete_reject_wrong_types(conn, task, function, task_id, key, field):
    """get and delete name the table and field of a mistyped argument, and change nothing."""
    state.set(conn, task, "k", 1)
    with pytest.raises(ValidationError) as caught:
        function(conn, task_id, key)
    assert f"state.{field}" in str(caught.value)
    assert count(conn) == 1


def test_database_rejects_a_duplicate_raw_key(conn, task):
    """The schema itself keeps (task_id, key) unique."""
    state.set(conn, task, "k", 1)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO state (task_id, key, value) VALUES (?, 'k', '2')", (task,))
    assert count(conn) == 1
