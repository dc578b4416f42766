"""Upgrading a database written by an earlier Abathur release, in place, keeping every row."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

import abathur_db
from abathur_db import _values

# The earlier releases' tables, written out from the SPEC's description (not taken
# from the package's schema files, so that a mistake there cannot hide here).
LEGACY_DDL = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, prompt TEXT NOT NULL, agent_type TEXT NOT NULL DEFAULT 'general',
    priority INTEGER NOT NULL DEFAULT 5, status TEXT NOT NULL, input_data TEXT NOT NULL,
    result_data TEXT, error_message TEXT, retry_count INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL DEFAULT 3, max_execution_timeout_seconds INTEGER NOT NULL DEFAULT 3600,
    submitted_at TIMESTAMP NOT NULL, started_at TIMESTAMP, completed_at TIMESTAMP,
    last_updated_at TIMESTAMP NOT NULL, created_by TEXT, parent_task_id TEXT, dependencies TEXT,
    FOREIGN KEY (parent_task_id) REFERENCES tasks(id));
CREATE TABLE agents (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, specialization TEXT NOT NULL, task_id TEXT NOT NULL,
    state TEXT NOT NULL, model TEXT NOT NULL, spawned_at TIMESTAMP NOT NULL, terminated_at TIMESTAMP,
    resource_usage TEXT, FOREIGN KEY (task_id) REFERENCES tasks(id));
CREATE TABLE state (
    id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
    FOREIGN KEY (task_id) REFERENCES tasks(id), UNIQUE(task_id, key));
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TIMESTAMP NOT NULL, agent_id TEXT,
    task_id TEXT NOT NULL, action_type TEXT NOT NULL, action_data TEXT, result TEXT,
    FOREIGN KEY (agent_id) REFERENCES agents(id), FOREIGN KEY (task_id) REFERENCES tasks(id));
CREATE TABLE metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TIMESTAMP NOT NULL, metric_name TEXT NOT NULL,
    metric_value REAL NOT NULL, labels TEXT, CHECK(metric_value >= 0));
CREATE TABLE checkpoints (
    task_id TEXT NOT NULL, iteration INTEGER NOT NULL, state TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL, PRIMARY KEY (task_id, iteration),
    FOREIGN KEY (task_id) REFERENCES tasks(id));
CREATE INDEX idx_tasks_status_priority ON tasks(status, priority DESC, submitted_at);
CREATE INDEX idx_tasks_submitted_at ON tasks(submitted_at);
CREATE INDEX idx_tasks_parent ON tasks(parent_task_id);
CREATE INDEX idx_tasks_running_timeout ON tasks(status, started_at);
CREATE INDEX idx_agents_task ON agents(task_id);
CREATE INDEX idx_agents_state ON agents(state);
CREATE INDEX idx_state_task_key ON state(task_id, key);
CREATE INDEX idx_audit_task ON audit(task_id);
CREATE INDEX idx_audit_agent ON audit(agent_id);
CREATE INDEX idx_audit_timestamp ON audit(timestamp);
CREATE INDEX idx_metrics_name_timestamp ON metrics(metric_name, timestamp);
CREATE INDEX idx_checkpoints_task ON checkpoints(task_id);
"""

T0 = dt.datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)


def _iso(offset_seconds: int, whole: bool = False) -> str:
    """Return a timestamp as the earlier releases wrote it: isoformat() with '+00:00'."""
    moment = T0 + dt.timedelta(seconds=offset_seconds)
    return (moment.replace(microsecond=0) if whole else moment).isoformat()


TABLE_ROWS = {
    "tasks": [
        ("t1", "first; DROP TABLE tasks; --", "general", 9, "completed", '{"a": 1}', '{"ok": true}', None,
         0, 3, 3600, _iso(0), _iso(1), _iso(2), _iso(2), "alice", None, "[]"),
        ("t2", "waits on t1 and t3", "coder", 5, "pending", "{}", None, None,
         0, 3, 3600, _iso(3, whole=True), None, None, _iso(3, whole=True), None, None, '["t1", "t3"]'),
        ("t3", "running 'quoted' ünïcode", "general", 7, "running", "[1, 2]", None, None,
         1, 3, 60, _iso(4), _iso(5), None, _iso(5), None, "t1", None),
    ],
    "agents": [
        ("a1", "alpha", "coding", "t1", "terminated", "m-1", _iso(1), _iso(2), '{"tokens": 10}'),
        ("a-orphan", "ghost", "none", "no-such-task", "idle", "m-1", _iso(6, whole=True), None, None),
    ],
    "state": [(1, "t1", "progress", '{"step": 3}', _iso(1), _iso(2))],
    "audit": [
        (1, _iso(1), "a1", "t1", "spawn", '{"x": [1, 2]}', "ok"),
        (2, _iso(2), None, "t3", "note", None, None),
    ],
    "metrics": [(1, _iso(1), "latency_ms", 12.5, '{"host": "h1"}'), (2, _iso(2), "count", 0.0, None)],
    "checkpoints": [("t3", 0, '{"i": 0}', _iso(4)), ("t3", 1, '{"i": 1}', _iso(5))],
}
TIMESTAMP_COLUMNS = {
    "tasks": ("submitted_at", "started_at", "completed_at", "last_updated_at"),
    "agents": ("spawned_at", "terminated_at"),
    "state": ("created_at", "updated_at"),
    "audit": ("timestamp",),
    "metrics": ("timestamp",),
    "checkpoints": ("created_at",),
}
KEYS = {"tasks": "id", "agents": "id", "state": "id", "audit": "id", "metrics": "id",
        "checkpoints": "task_id, iteration"}


def _build_legacy(path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(LEGACY_DDL)  # a one-off fixture; no transaction is open here
    columns = {}
    for table, rows in TABLE_ROWS.items():
        columns[table] = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    conn.close()
    return columns


def _schema(conn) -> list[tuple]:
    return conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY type, name"
    ).fetchall()


@pytest.fixture
def upgraded(tmp_path):
    """Return (pool, legacy column names, path) for a legacy database opened once."""
    path = tmp_path / "legacy.db"
    columns = _build_legacy(path)
    return abathur_db.open(path), columns, path


def test_every_row_is_kept_with_timestamps_rewritten(upgraded):
    """Every legacy row is present with its values; timestamps are in the one current format."""
    pool, columns, _ = upgraded
    conn = pool.connection()
    for table, rows in TABLE_ROWS.items():
        names = columns[table]
        got = conn.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY {KEYS[table]}").fetchall()
        expected = []
        for row in rows:
            values = dict(zip(names, row))
            for column in TIMESTAMP_COLUMNS[table]:
                if values[column] is not None:
                    values[column] = _values.format_datetime(dt.datetime.fromisoformat(values[column]))
            if table == "tasks" and values["dependencies"] is None:
                values["dependencies"] = "[]"
            expected.append(tuple(values.values()))
        assert got == sorted(expected), table
    assert conn.execute("SELECT submitted_at FROM tasks WHERE id = 't2'").fetchone()[0] == \
        "2024-03-01T12:00:03.000Z"


def test_new_columns_are_null_and_dependencies_are_counted(upgraded):
    """New link columns start NULL; unmet dependencies are computed from the legacy lists."""
    pool, _, _ = upgraded
    conn = pool.connection()
    for table in ("tasks", "agents", "checkpoints"):
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE session_id IS NOT NULL").fetchone()[0] == 0
    memory = conn.execute(
        "SELECT count(*) FROM audit WHERE memory_operation_type IS NOT NULL "
        "OR memory_namespace IS NOT NULL OR memory_entry_id IS NOT NULL"
    ).fetchone()[0]
    assert memory == 0
    assert conn.execute("SELECT unmet_dependencies FROM tasks WHERE id = 't2'").fetchone()[0] == 1
    conn.execute("UPDATE tasks SET status = 'completed' WHERE id = 't3'")
    assert conn.execute("SELECT unmet_dependencies FROM tasks WHERE id = 't2'").fetchone()[0] == 0


def test_schema_equals_a_fresh_database(upgraded, tmp_path):
    """After the upgrade, tables, columns, constraints and indexes equal a new database's."""
    pool, _, _ = upgraded
    with abathur_db.open(tmp_path / "fresh.db") as fresh:
        assert _schema(pool.connection()) == _schema(fresh.connection())


def test_backup_is_written_before_the_change(upgraded):
    """A copy of the legacy database, every row included, is written next to it first."""
    pool, columns, path = upgraded
    assert pool.backup_path is not None and pool.backup_path.startswith(str(path))
    copy = sqlite3.connect(pool.backup_path)
    try:
        for table, rows in TABLE_ROWS.items():
            assert copy.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == len(rows)
        assert copy.execute("PRAGMA user_version").fetchone()[0] == 0
        assert [c[1] for c in copy.execute("PRAGMA table_info(tasks)")] == columns["tasks"]
    finally:
        copy.close()


def test_orphans_are_kept_and_reported_foreign_keys_enforced(upgraded):
    """The orphan agent survives, foreign_key_check reports it, and new orphans are refused."""
    pool, _, _ = upgraded
    conn = pool.connection()
    assert conn.execute("SELECT id FROM agents WHERE task_id = 'no-such-task'").fetchall() == [("a-orphan",)]
    violations = conn.execute("PRAGMA foreign_key_check").fetchall()
    assert [(table, parent) for table, _, parent, _ in violations] == [("agents", "tasks")]
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("INSERT INTO agents (id, name, specialization, task_id, model) "
                      "VALUES ('a9', 'n', 's', 'nobody', 'm')")


def test_session_deletion_unlinks_tasks_agents_and_checkpoints(upgraded):
    """After the upgrade, deleting a session sets session_id to NULL on its rows, deleting none."""
    pool, _, _ = upgraded
    conn = pool.connection()
    conn.execute("INSERT INTO sessions (id, app_name, user_id) VALUES ('s1', 'app', 'u')")
    conn.execute("UPDATE tasks SET session_id = 's1' WHERE id IN ('t1', 't3')")
    conn.execute("UPDATE agents SET session_id = 's1' WHERE id = 'a1'")
    conn.execute("UPDATE checkpoints SET session_id = 's1' WHERE task_id = 't3'")
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLE_ROWS}
    conn.execute("DELETE FROM sessions WHERE id = 's1'")
    for table in ("tasks", "agents", "checkpoints"):
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE session_id IS NOT NULL").fetchone()[0] == 0
    assert {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLE_ROWS} == counts


def test_upgraded_database_is_in_wal_mode_and_reopens_without_changes(upgraded):
    """The upgraded file runs in WAL mode and a second open applies nothing."""
    pool, _, path = upgraded
    assert pool.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    pool.close()
    with abathur_db.open(path) as again:
        assert again.applied == [] and again.backup_path is None


def test_unparseable_legacy_timestamp_is_kept_and_reported(tmp_path):
    """A legacy value that breaks a rule is copied as it was and reported, never dropped."""
    path = tmp_path / "odd.db"
    _build_legacy(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE metrics SET timestamp = 'yesterday-ish' WHERE id = 2")
    conn.close()
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        assert conn.execute("SELECT timestamp FROM metrics WHERE id = 2").fetchone()[0] == "yesterday-ish"
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("CHECK constraint failed in metrics",)]
