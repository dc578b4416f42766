"""checkpoints: save, load, list, prune."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

import pytest

from abathur_db import checkpoints, sessions
from abathur_db.errors import ForeignKeyError, NotFoundError, UniqueError, ValidationError
from helpers import tracing

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Awkward values (text, falsy, 1 MB) are stored verbatim in test_bad_input's table.
STATES = [
    pytest.param({"step": 3, "messages": ["a", "b"], "done": False, "score": 0.5}, id="object"),
    pytest.param(None, id="null"),
]


def count(conn) -> int:
    return conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]


def iterations(conn, task_id: str) -> list[int]:
    return [r["iteration"] for r in checkpoints.list(conn, task_id=task_id)]


def created_at(conn, task_id: str, iteration: int, moment: str) -> None:
    conn.execute("UPDATE checkpoints SET created_at = ? WHERE task_id = ? AND iteration = ?",
                 (moment, task_id, iteration))


@pytest.fixture
def task(make_task):
    return make_task("t1")


@pytest.mark.parametrize("state", STATES)
def test_save_then_load_returns_the_state_verbatim(conn, task, state):
    """save returns the stored row; load gives back the same state, JSON decoded."""
    row = checkpoints.save(conn, task, 0, state)
    assert row == checkpoints.load(conn, task, 0) == checkpoints.load(conn, task)
    assert row["state"] == state and row["task_id"] == task and row["iteration"] == 0
    assert row["session_id"] is None and TIMESTAMP.fullmatch(row["created_at"])


@pytest.mark.parametrize("state", [None, 0, False, "", [], {}], ids=repr)
def test_a_state_of_none_is_stored_as_the_json_null_text(conn, task, state):
    """A None state is stored as the JSON text 'null' (the column is NOT NULL); falsy ones as their JSON."""
    checkpoints.save(conn, task, 0, state)
    stored, kind = conn.execute("SELECT state, typeof(state) FROM checkpoints").fetchone()
    assert kind == "text" and json.loads(stored) == state and type(json.loads(stored)) is type(state)


def test_save_links_a_session(conn, task):
    """A checkpoint can belong to a session."""
    session = sessions.create(conn, "app", "user")["id"]
    assert checkpoints.save(conn, task, 1, {}, session_id=session)["session_id"] == session


def test_load_latest_is_the_highest_iteration(conn, make_task):
    """load without an iteration returns the task's highest iteration, whatever the save order."""
    t1, t2 = make_task("t1"), make_task("t2")
    for iteration in (2, 7, 0, 5):
        checkpoints.save(conn, t1, iteration, {"i": iteration})
    checkpoints.save(conn, t2, 9, {"i": 9})
    assert checkpoints.load(conn, t1)["state"] == {"i": 7}
    assert checkpoints.load(conn, t1, 2)["state"] == {"i": 2}


@pytest.mark.parametrize("task_id, iteration, error, shown", [
    pytest.param("t2", None, NotFoundError, "'t2'", id="no-checkpoint"),
    pytest.param("t1", 3, NotFoundError, "iteration 3", id="missing-iteration"),
    pytest.param("missing", None, NotFoundError, "'missing'", id="unknown-task"),
    pytest.param("t1", -1, ValidationError, "checkpoints.iteration", id="negative-iteration"),
    pytest.param("t1", "1", ValidationError, "checkpoints.iteration", id="text-iteration"),
    pytest.param(None, None, ValidationError, "checkpoints.task_id", id="none-task"),
])
def test_load_rejects_missing_or_bad_keys(conn, make_task, task_id, iteration, error, shown):
    """load raises NotFoundError (or ValidationError) naming the table and key."""
    checkpoints.save(conn, make_task("t1"), 1, {})
    make_task("t2")
    with pytest.raises(error) as caught:
        checkpoints.load(conn, task_id, iteration)
    assert "checkpoints" in str(caught.value) and shown in str(caught.value)


BAD_SAVES = [
    pytest.param({"iteration": 1}, UniqueError, "iteration", "1", id="duplicate"),
    pytest.param({"task_id": "missing"}, ForeignKeyError, "task_id", "'missing'", id="unknown-task"),
    pytest.param({"session_id": "missing"}, ForeignKeyError, "session_id", "'missing'", id="unknown-session"),
    pytest.param({"task_id": 3}, ValidationError, "task_id", "3", id="int-task"),
    pytest.param({"session_id": ""}, ValidationError, "session_id", "''", id="empty-session"),
    pytest.param({"iteration": -1}, ValidationError, "iteration", "-1", id="negative-iteration"),
    pytest.param({"iteration": 1.0}, ValidationError, "iteration", "1.0", id="float-iteration"),
    pytest.param({"iteration": True}, ValidationError, "iteration", "True", id="bool-iteration"),
    pytest.param({"iteration": "2"}, ValidationError, "iteration", "'2'", id="text-iteration"),
    pytest.param({"iteration": 2**63}, ValidationError, "iteration", str(2**63), id="huge-iteration"),
    pytest.param({"state": float("nan")}, ValidationError, "state", "nan", id="json-nan"),
    pytest.param({"state": {"x": float("inf")}}, ValidationError, "state", "inf", id="json-inf"),
    pytest.param({"state": {"s": {1, 2}}}, ValidationError, "state", "{1, 2}", id="json-set"),
    pytest.param({"state": object()}, ValidationError, "state", "object", id="json-object"),
]


@pytest.mark.parametrize("override, error, field, shown", BAD_SAVES)
def test_save_rejects_bad_input(conn, task, override, error, field, shown):
    """Bad input raises the specific error naming table, field and value, and stores nothing."""
    checkpoints.save(conn, task, 1, {"kept": True})
    args = {"task_id": task, "iteration": 2, "state": {}, **override}
    before = count(conn)
    with pytest.raises(error) as caught:
        checkpoints.save(conn, args.pop("task_id"), args.pop("iteration"), args.pop("state"), **args)
    assert f"checkpoints.{field}" in str(caught.value) and shown in str(caught.value)
    assert count(conn) == before
    assert checkpoints.load(conn, task, 1)["state"] == {"kept": True}


def test_list_by_task_in_iteration_order(conn, make_task):
    """A task's checkpoints come by iteration; other tasks stay out; limit applies."""
    t1, t2 = make_task("t1"), make_task("t2")
    for iteration in (3, 1, 2):
        checkpoints.save(conn, t1, iteration, iteration)
    checkpoints.save(conn, t2, 0, 0)
    assert iterations(conn, t1) == [1, 2, 3]
    assert [r["iteration"] for r in checkpoints.list(conn, task_id=t1, limit=2)] == [1, 2]


def test_list_by_session_oldest_first(conn, task):
    """A session's checkpoints come oldest first, the earlier insert first on a tie."""
    session = sessions.create(conn, "app", "user")["id"]
    for iteration in range(3):
        checkpoints.save(conn, task, iteration, {}, session_id=session)
    checkpoints.save(conn, task, 9, {})
    created_at(conn, task, 0, "2024-01-05T00:00:00.000Z")
    created_at(conn, task, 1, "2024-01-01T00:00:00.000Z")
    created_at(conn, task, 2, "2024-01-01T00:00:00.000Z")
    assert [r["iteration"] for r in checkpoints.list(conn, session_id=session)] == [1, 2, 0]


@pytest.mark.parametrize("since, until, expected", [
    pytest.param("2024-01-02T00:00:00.000Z", "2024-01-04T00:00:00.000Z", [1, 2], id="half-open"),
    pytest.param(dt.datetime(2024, 1, 3, tzinfo=dt.timezone.utc), None, [2, 3], id="open-end"),
    pytest.param(None, "2024-01-02T00:00:00+00:00", [0], id="open-start"),
])
def test_list_created_in_a_range(conn, task, since, until, expected):
    """A range [since, until) selects by created_at, oldest first; either end may be open."""
    for iteration in range(4):
        checkpoints.save(conn, task, iteration, {})
        created_at(conn, task, iteration, f"2024-01-0{iteration + 1}T00:00:00.000Z")
    rows = checkpoints.list(conn, created_since=since, created_until=until)
    assert [r["iteration"] for r in rows] == expected


@pytest.mark.parametrize("kwargs, shown", [
    pytest.param({}, "none", id="no-filter"),
    pytest.param({"task_id": "t1", "session_id": "s"}, "session_id", id="two-filters"),
    pytest.param({"session_id": "s", "created_until": "2024-01-01T00:00:00Z"}, "created",
                 id="session-and-range"),
    pytest.param({"task_id": 1}, "checkpoints.task_id", id="int-task"),
    pytest.param({"session_id": b"s"}, "checkpoints.session_id", id="bytes-session"),
    pytest.param({"created_since": 12}, "checkpoints.created_since", id="int-time"),
    pytest.param({"task_id": "t1", "limit": 1.5}, "checkpoints.limit", id="float-limit"),
])
def test_list_rejects_bad_filters(conn, kwargs, shown):
    """list needs exactly one valid filter group and a valid limit."""
    with pytest.raises(ValidationError) as caught:
        checkpoints.list(conn, **kwargs)
    assert "checkpoints" in str(caught.value) and shown in str(caught.value)


@pytest.mark.parametrize("keep_last, deleted, kept", [
    pytest.param(0, 5, [], id="keep-none"),
    pytest.param(1, 4, [9], id="keep-one"),
    pytest.param(3, 2, [4, 6, 9], id="keep-three"),
    pytest.param(5, 0, [0, 2, 4, 6, 9], id="keep-all"),
    pytest.param(50, 0, [0, 2, 4, 6, 9], id="keep-more-than-exist"),
])
def test_prune_keeps_the_newest_iterations(conn, make_task, keep_last, deleted, kept):
    """prune deletes all but the newest keep_last iterations of that task only, and counts them."""
    t1, t2 = make_task("t1"), make_task("t2")
    for iteration in (4, 0, 9, 2, 6):
        checkpoints.save(conn, t1, iteration, {})
    checkpoints.save(conn, t2, 0, {})
    assert checkpoints.prune(conn, t1, keep_last) == deleted
    assert iterations(conn, t1) == kept
    assert iterations(conn, t2) == [0]


def test_prune_a_task_without_checkpoints(conn, task):
    """A task with no checkpoints, or an unknown task, has nothing to prune."""
    assert checkpoints.prune(conn, task, 1) == 0
    assert checkpoints.prune(conn, "missing", 0) == 0


@pytest.mark.parametrize("task_id, keep_last, field", [
    pytest.param("t1", -1, "keep_last", id="negative"),
    pytest.param("t1", "2", "keep_last", id="text"),
    pytest.param("t1", None, "keep_last", id="none"),
    pytest.param(None, 1, "task_id", id="none-task"),
])
def test_prune_rejects_bad_input(conn, task, task_id, keep_last, field):
    """A bad keep_last or task id raises ValidationError and deletes nothing."""
    checkpoints.save(conn, task, 0, {})
    with pytest.raises(ValidationError) as caught:
        checkpoints.prune(conn, task_id, keep_last)
    assert f"checkpoints.{field}" in str(caught.value)
    assert count(conn) == 1


def test_session_delete_unlinks_checkpoints_and_deletes_nothing(conn, task):
    """Deleting a session sets session_id to NULL on its checkpoints; other checkpoints are untouched."""
    gone, kept = sessions.create(conn, "app", "u")["id"], sessions.create(conn, "app", "u")["id"]
    linked = checkpoints.save(conn, task, 0, {"a": 1}, session_id=gone)
    other = checkpoints.save(conn, task, 1, {"b": 2}, session_id=kept)
    unlinked = checkpoints.save(conn, task, 2, {"c": 3})
    sessions.delete(conn, gone)
    assert count(conn) == 3
    assert checkpoints.list(conn, task_id=task) == [{**linked, "session_id": None}, other, unlinked]


@pytest.mark.parametrize("keep_last", [0, 1, 2, 5])
def test_prune_all_keeps_the_newest_iterations_of_every_task(conn, make_task, keep_last):
    """prune_all deletes all but the newest keep_last iterations of each task, and counts them."""
    saved = {make_task("t1"): [4, 0, 9, 2, 6], make_task("t2"): [0], make_task("t3"): [7, 3], make_task("t4"): []}
    for task_id, numbers in saved.items():
        for iteration in numbers:
            checkpoints.save(conn, task_id, iteration, {})
    kept = {task_id: sorted(numbers)[len(numbers) - keep_last:] if keep_last else [] for task_id, numbers in saved.items()}
    expected = sum(len(numbers) - len(kept[task_id]) for task_id, numbers in saved.items())
    assert checkpoints.prune_all(conn, keep_last) == expected
    assert {task_id: iterations(conn, task_id) for task_id in saved} == kept


def test_prune_all_commits_one_task_at_a_time_and_logs_once(conn, make_task, caplog):
    """Each task's checkpoints are deleted in a write transaction of their own; one INFO line sums it up."""
    for task_id in (make_task("t1"), make_task("t2")):
        for iteration in range(3):
            checkpoints.save(conn, task_id, iteration, {})
    with tracing(conn) as sent:
        with caplog.at_level(logging.INFO, logger="abathur_db"):
            assert checkpoints.prune_all(conn, 1) == 4
    assert [line for line in sent if line in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"] * 2
    assert [record.getMessage() for record in caplog.records] == [
        "checkpoints: pruned 4 checkpoint(s) of 2 task(s), keeping the last 1 of each"]


@pytest.mark.parametrize("keep_last", [-1, "2", None, True])
def test_prune_all_rejects_bad_keep_last(conn, task, keep_last):
    """A bad keep_last raises ValidationError naming it and deletes nothing."""
    checkpoints.save(conn, task, 0, {})
    with pytest.raises(ValidationError, match="checkpoints.keep_last"):
        checkpoints.prune_all(conn, keep_last)
    assert count(conn) == 1
