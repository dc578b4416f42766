"""sqlite3 errors become the package's errors, with table, field and value in the message."""

from __future__ import annotations

import re
import sqlite3

import pytest

import abathur_db
from abathur_db import errors, metrics
from abathur_db.errors import translate
from abathur_db.transaction import write


def _raised_by(call) -> sqlite3.Error:
    try:
        call()
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("no error")  # pragma: no cover - only when the test fails


def _raised(conn, sql, params=()):
    return _raised_by(lambda: conn.execute(sql, params))


def test_every_error_shares_one_base_class():
    """Each package error is an AbathurDBError, so one except clause catches them all."""
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.AbathurDBError), name
            assert obj.__doc__, name


NO_VALUE = object()  # the offending value is written in the statement itself, not bound


@pytest.mark.parametrize(
    ("sql", "params", "error", "field", "value"),
    [
        ("INSERT INTO sessions (id, app_name, user_id) VALUES (:id, 'a', 'u')", {"id": "s0"},
         errors.UniqueError, "sessions.id", "s0"),
        ("INSERT INTO metrics (id, metric_name, metric_value) VALUES (:id, 'm', 1)", {"id": 1},
         errors.UniqueError, "metrics.id", 1),
        ("INSERT INTO checkpoints (task_id, iteration, state) VALUES (:task_id, :iteration, '{}')",
         {"task_id": "dep", "iteration": 0}, errors.UniqueError, "checkpoints.iteration", 0),
        ("INSERT INTO tasks (id, prompt) VALUES (:id, :prompt)", {"id": "t", "prompt": None},
         errors.ValidationError, "tasks.prompt", None),
        ("INSERT INTO tasks (id, prompt, priority) VALUES (:id, 'p', :priority)", {"id": "t", "priority": "high"},
         errors.ValidationError, "tasks.priority", "high"),
        ("INSERT INTO tasks (id, prompt, input_data) VALUES (:id, 'p', :input_data)",
         {"id": "t", "input_data": "{oops"}, errors.ValidationError, "tasks.input_data", "{oops"),
        ("INSERT INTO tasks (id, prompt) VALUES (:id, NULL)", {"id": "t"},
         errors.ValidationError, "tasks.prompt", NO_VALUE),
        ("INSERT INTO tasks (id, prompt, priority) VALUES (:id, 'p', 11)", {"id": "t"},
         errors.ValidationError, "tasks.priority", NO_VALUE),
        ("UPDATE tasks SET dependencies = '[\"x\"]' WHERE id = 'dep'", {},
         errors.ValidationError, "tasks.dependencies", NO_VALUE),
    ],
)
def test_constraint_failures_name_table_field_and_value(conn, sql, params, error, field, value):
    """UNIQUE, NOT NULL, CHECK and trigger failures map to their error, naming the table, the field and the value."""
    conn.execute("INSERT INTO sessions (id, app_name, user_id) VALUES ('s0', 'a', 'u')")
    conn.execute("INSERT INTO metrics (id, metric_name, metric_value) VALUES (1, 'm', 1)")
    conn.execute("INSERT INTO tasks (id, prompt) VALUES ('dep', 'p')")
    conn.execute("INSERT INTO checkpoints (task_id, iteration, state) VALUES ('dep', 0, '{}')")
    table = field.split(".")[0]
    translated = translate(_raised(conn, sql, params), table, params)
    assert type(translated) is error
    message = str(translated)
    assert message.startswith(f"{table}: ") and field in message, message
    if value is not NO_VALUE:
        assert errors.short_repr(value) in message, message


@pytest.mark.parametrize("params", [("prompt",), ["prompt"], None], ids=["tuple", "list", "none"])
def test_a_constraint_failure_with_positional_parameters_names_the_field(conn, params):
    """Positional parameters (or none), which name no column, never make translate() fail: the field is named."""
    key = "?" if params else "'t'"
    sql = f"INSERT INTO tasks (id, prompt) VALUES ({key}, NULL)"
    translated = translate(_raised(conn, sql, params or ()), "tasks", params, conn)
    assert type(translated) is errors.ValidationError
    assert str(translated).startswith("tasks: ") and "tasks.prompt" in str(translated)


def test_a_foreign_key_failure_through_write_with_positional_parameters_is_a_foreign_key_error(conn):
    """write() with positional parameters that break a foreign key raises ForeignKeyError naming the table."""
    with pytest.raises(errors.ForeignKeyError) as caught:
        write(conn, "agents", "INSERT INTO agents (id, name, specialization, task_id, model)"
                              " VALUES (?, 'n', 's', ?, 'm')", ("a1", "ghost"))
    assert str(caught.value).startswith("agents: ")
    assert conn.execute("SELECT count(*) FROM agents").fetchone()[0] == 0


def test_foreign_key_failure_names_the_missing_parent(conn):
    """With the connection at hand, a foreign-key failure names the table, the column, the value and the parent."""
    conn.execute("INSERT INTO tasks (id, prompt) VALUES ('t1', 'p')")
    params = {"id": "a1", "task_id": "t1", "session_id": "nope"}
    exc = _raised(conn, "INSERT INTO agents (id, name, specialization, task_id, model, session_id) "
                        "VALUES (:id, 'n', 's', :task_id, 'm', :session_id)", params)
    translated = translate(exc, "agents", params, conn)
    assert isinstance(translated, errors.ForeignKeyError)
    message = str(translated)
    assert message.startswith("agents: ") and "agents.session_id = 'nope'" in message, message
    assert re.search(r"\bsessions\b", message), message  # the parent table that has no such row
    without_conn = str(translate(exc, "agents", params))
    assert type(translate(exc, "agents", params)) is errors.ForeignKeyError and without_conn.startswith("agents: ")


def test_full_database_is_a_storage_full_error(conn):
    """Running out of pages (or disk) raises StorageFullError, prefixed with the table."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    exc = _raised(conn, "INSERT INTO metrics (metric_name, metric_value) VALUES (?, 1)", ("x" * 100_000,))
    assert isinstance(translate(exc, "metrics"), errors.StorageFullError)
    assert str(translate(exc, "metrics")).startswith("metrics: ")


def test_a_full_database_during_a_package_write_names_the_table(conn):
    """A package write that finds the database full raises StorageFullError prefixed with its table, storing nothing."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(errors.StorageFullError) as caught:
        metrics.record(conn, "x" * 100_000, 1)
    assert str(caught.value).startswith("metrics: ")
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert conn.execute("SELECT count(*) FROM metrics").fetchone()[0] == 0


def test_held_write_lock_is_a_busy_error(pool, db_path):
    """A write lock held past busy_timeout raises BusyError, not a generic error, prefixed with the table."""
    holder = pool.connection()
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        exc = _raised(waiter, "BEGIN IMMEDIATE")
    finally:
        waiter.close()
        holder.execute("ROLLBACK")
    assert isinstance(translate(exc), errors.BusyError)
    assert type(translate(exc, "tasks")) is errors.BusyError and str(translate(exc, "tasks")).startswith("tasks: ")


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
    exc = _raised(conn, "SELECT * FROM no_such_table")
    translated = translate(exc, "tasks")
    assert type(translated) is errors.AbathurDBError
    assert str(translated).startswith("tasks: ") and str(exc) in str(translated)


def test_foreign_key_failure_whose_parents_all_exist_gets_the_general_message(conn):
    """When every reference in the parameters exists (the culprit is elsewhere), the message says so generally."""
    conn.execute("INSERT INTO tasks (id, prompt) VALUES ('t1', 'p')")
    conn.execute("INSERT INTO sessions (id, app_name, user_id) VALUES ('s1', 'a', 'u')")
    params = {"id": "a1", "task_id": "t1", "session_id": "s1"}
    exc = _raised(conn, "INSERT INTO agents (id, name, specialization, task_id, model, session_id) "
                        "VALUES (:id, 'n', 's', 'ghost', 'm', :session_id)", params)
    translated = translate(exc, "agents", params, conn)
    assert isinstance(translated, errors.ForeignKeyError)
    assert str(translated).startswith("agents: ")
    assert "session_id" not in str(translated) and "task_id" not in str(translated)  # neither is to blame


def test_short_repr_of_a_value_nested_too_deeply_to_show():
    """A value whose repr would recurse too deeply is named by its type instead of raising RecursionError."""
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert errors.short_repr(nested) == "<a list nested too deeply to show>"


def _sqlite_error(code: int) -> sqlite3.Error:
    """Return an sqlite3 error carrying result code `code`, as sqlite3 raises them."""
    exc = sqlite3.OperationalError(f"an error with result code {code}")
    exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize("code, error", [
    (sqlite3.SQLITE_BUSY, errors.BusyError),
    (sqlite3.SQLITE_BUSY_SNAPSHOT, errors.BusyError),
    (sqlite3.SQLITE_LOCKED, errors.BusyError),
    (sqlite3.SQLITE_LOCKED_SHAREDCACHE, errors.BusyError),
    (sqlite3.SQLITE_FULL, errors.StorageFullError),
    (sqlite3.SQLITE_IOERR_SHMSIZE, errors.StorageFullError),
    (sqlite3.SQLITE_READONLY, errors.DatabaseFileError),
    (sqlite3.SQLITE_READONLY_DBMOVED, errors.DatabaseFileError),
    (sqlite3.SQLITE_CORRUPT, errors.DatabaseFileError),
    (sqlite3.SQLITE_CORRUPT_INDEX, errors.DatabaseFileError),
    (sqlite3.SQLITE_CANTOPEN, errors.DatabaseFileError),
    (sqlite3.SQLITE_CANTOPEN_ISDIR, errors.DatabaseFileError),
    (sqlite3.SQLITE_NOTADB, errors.DatabaseFileError),
    (sqlite3.SQLITE_IOERR, errors.AbathurDBError),
    (sqlite3.SQLITE_IOERR_READ, errors.AbathurDBError),
    (sqlite3.SQLITE_MISUSE, errors.AbathurDBError),
], ids=lambda value: str(value))
def test_each_sqlite_result_code_becomes_its_package_error(code, error):
    """Each SQLite result code, extended forms included, becomes its package error, prefixed with the table."""
    translated = translate(_sqlite_error(code), "tasks")
    assert type(translated) is error
    assert str(translated).startswith("tasks: ")


def test_a_table_locked_by_an_unfinished_statement_of_the_same_connection_is_a_busy_error(conn):
    """SQLITE_LOCKED (a table in use by another statement of the connection) is BusyError, like SQLITE_BUSY."""
    conn.execute("CREATE TABLE scratch (x)")
    conn.executemany("INSERT INTO scratch VALUES (?)", [(1,), (2,)])
    reading = conn.execute("SELECT x FROM scratch")
    reading.fetchone()
    try:
        exc = _raised(conn, "DROP TABLE scratch")
    finally:
        reading.fetchall()
    assert exc.sqlite_errorcode == sqlite3.SQLITE_LOCKED
    assert type(translate(exc, "scratch")) is errors.BusyError


def test_only_a_closed_connection_is_a_configuration_error(tmp_path):
    """sqlite3's error for a closed connection is ConfigurationError naming the table; another misuse is not."""
    plain = sqlite3.connect(tmp_path / "plain.db")
    plain.close()
    closed = _raised_by(lambda: plain.execute("SELECT 1"))
    translated = translate(closed, "tasks")
    assert type(translated) is errors.ConfigurationError
    assert str(translated).startswith("tasks: ") and str(closed) in str(translated)
    other = sqlite3.connect(tmp_path / "other.db")
    try:
        misuse = _raised_by(lambda: other.execute("SELECT ?", (1, 2)))
    finally:
        other.close()
    assert isinstance(misuse, sqlite3.ProgrammingError)
    assert type(translate(misuse, "tasks")) is errors.AbathurDBError
