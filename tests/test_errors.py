"""sqlite3 errors become the package's errors, with table, field and value in the message."""

from __future__ import annotations

import sqlite3

import pytest

import abathur_db
from abathur_db import errors
from abathur_db.errors import translate


def _raised(conn, sql, params=()):
    try:
        conn.execute(sql, params)
    except sqlite3.Error as exc:
        return exc
    raise AssertionError(f"no error from {sql}")  # pragma: no cover - only when the test fails


def test_every_error_shares_one_base_class():
    """Each package error is an AbathurDBError, so one except clause catches them all."""
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.AbathurDBError), name
            assert obj.__doc__, name


@pytest.mark.parametrize(
    ("sql", "params", "error", "message"),
    [
        ("INSERT INTO sessions (id, app_name, user_id) VALUES (:id, 'a', 'u')", {"id": "s0"},
         errors.UniqueError, "sessions: duplicate sessions.id = 's0' (UNIQUE constraint)"),
        ("INSERT INTO metrics (id, metric_name, metric_value) VALUES (:id, 'm', 1)", {"id": 1},
         errors.UniqueError, "metrics: duplicate metrics.id = 1 (UNIQUE constraint)"),
        ("INSERT INTO tasks (id, prompt) VALUES (:id, :prompt)", {"id": "t", "prompt": None},
         errors.ValidationError, "tasks: tasks.prompt = None is required (NOT NULL constraint)"),
        ("INSERT INTO tasks (id, prompt, priority) VALUES (:id, 'p', :priority)", {"id": "t", "priority": "high"},
         errors.ValidationError, "tasks: tasks.priority = 'high' is not allowed (CHECK constraint priority)"),
        ("INSERT INTO tasks (id, prompt, input_data) VALUES (:id, 'p', :input_data)",
         {"id": "t", "input_data": "{oops"},
         errors.ValidationError, "tasks: tasks.input_data = '{oops' is not allowed (CHECK constraint input_data)"),
        ("UPDATE tasks SET dependencies = '[\"x\"]' WHERE id = 'dep'", {},
         errors.ValidationError, "tasks: tasks.dependencies cannot change once the task exists"),
    ],
)
def test_constraint_failures_name_table_field_and_value(conn, sql, params, error, message):
    """UNIQUE, NOT NULL, CHECK and trigger failures map to their error with the value quoted."""
    conn.execute("INSERT INTO sessions (id, app_name, user_id) VALUES ('s0', 'a', 'u')")
    conn.execute("INSERT INTO metrics (id, metric_name, metric_value) VALUES (1, 'm', 1)")
    conn.execute("INSERT INTO tasks (id, prompt) VALUES ('dep', 'p')")
    table = sql.split()[2] if sql.startswith("INSERT") else sql.split()[1]
    translated = translate(_raised(conn, sql, params), table, params)
    assert type(translated) is error
    assert str(translated) == message


def test_foreign_key_failure_names_the_missing_parent(conn):
    """With the connection at hand, a foreign-key failure names the column and value."""
    conn.execute("INSERT INTO tasks (id, prompt) VALUES ('t1', 'p')")
    params = {"id": "a1", "task_id": "t1", "session_id": "nope"}
    exc = _raised(conn, "INSERT INTO agents (id, name, specialization, task_id, model, session_id) "
                        "VALUES (:id, 'n', 's', :task_id, 'm', :session_id)", params)
    translated = translate(exc, "agents", params, conn)
    assert isinstance(translated, errors.ForeignKeyError)
    assert str(translated) == "agents: agents.session_id = 'nope': no sessions row has that id"
    assert "a referenced row does not exist" in str(translate(exc, "agents", params))


def test_full_database_is_a_storage_full_error(conn):
    """Running out of pages (or disk) raises StorageFullError."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    exc = _raised(conn, "INSERT INTO metrics (metric_name, metric_value) VALUES (?, 1)", ("x" * 100_000,))
    assert isinstance(translate(exc, "metrics"), errors.StorageFullError)


def test_held_write_lock_is_a_busy_error(pool, db_path):
    """A write lock held past busy_timeout raises BusyError, not a generic error."""
    holder = pool.connection()
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        exc = _raised(waiter, "BEGIN IMMEDIATE")
    finally:
        waiter.close()
        holder.execute("ROLLBACK")
    assert isinstance(translate(exc), errors.BusyError)


def test_file_that_is_not_sqlite_is_a_database_file_error(tmp_path):
    """A file of another kind raises DatabaseFileError."""
    path = tmp_path / "notes.txt"
    path.write_text("these are not the pages you are looking for" * 100)
    conn = sqlite3.connect(path)
    try:
        exc = _raised(conn, "SELECT * FROM sqlite_master")
    finally:
        conn.close()
    assert isinstance(translate(exc), errors.DatabaseFileError)
    with pytest.raises(errors.DatabaseFileError):
        abathur_db.open(path)


def test_other_errors_keep_the_base_class_and_sqlite_message(conn):
    """An error with no specific class still becomes an AbathurDBError with SQLite's text."""
    translated = translate(_raised(conn, "SELECT * FROM no_such_table"), "tasks")
    assert type(translated) is errors.AbathurDBError
    assert str(translated) == "tasks: no such table: no_such_table"


def test_foreign_key_failure_whose_parents_all_exist_gets_the_general_message(conn):
    """When every reference in the parameters exists (the culprit is elsewhere), the message says so generally."""
    conn.execute("INSERT INTO tasks (id, prompt) VALUES ('t1', 'p')")
    conn.execute("INSERT INTO sessions (id, app_name, user_id) VALUES ('s1', 'a', 'u')")
    params = {"id": "a1", "task_id": "t1", "session_id": "s1"}
    exc = _raised(conn, "INSERT INTO agents (id, name, specialization, task_id, model, session_id) "
                        "VALUES (:id, 'n', 's', 'ghost', 'm', :session_id)", params)
    translated = translate(exc, "agents", params, conn)
    assert isinstance(translated, errors.ForeignKeyError)
    assert str(translated) == "agents: a referenced row does not exist (FOREIGN KEY constraint)"


def test_short_repr_of_a_value_nested_too_deeply_to_show():
    """A value whose repr would recurse too deeply is named by its type instead of raising RecursionError."""
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert errors.short_repr(nested) == "<a list nested too deeply to show>"
