"""Upgrading a database written by an earlier Abathur release, in place, keeping every row and all of the user's."""

from __future__ import annotations

import datetime as dt
import glob
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import abathur_db
from abathur_db import _values, schema
from abathur_db import maintenance
from abathur_db import pool as pool_module
from abathur_db.errors import SchemaError, StorageFullError
from abathur_db.validation import rule_violations
from legacy import (
    AUTOINCREMENT_TABLES,
    KEYS,
    NON_JSON,
    OUT_OF_ENUM,
    TABLE_ROWS,
    TIMESTAMP_COLUMNS,
    VARIANTS,
    Variant,
    build_large_legacy,
    build_legacy,
)

FILES = schema.load_files()


def _schema(conn) -> list[tuple]:
    return conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY type, name"
    ).fetchall()


def _sql(conn, name: str) -> str | None:
    row = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return row and row[0]


def _contents(path) -> tuple:
    """Return the schema version and every statement of a dump: what a refused upgrade must not change."""
    raw = sqlite3.connect(path)
    try:
        return raw.execute("PRAGMA user_version").fetchone()[0], list(raw.iterdump())
    finally:
        raw.close()


def _backups(path) -> list[str]:
    return sorted(glob.glob(glob.escape(str(path)) + ".*"))


@pytest.fixture
def upgraded(tmp_path):
    """Return (pool, legacy column names, path) for a legacy database opened once."""
    path = tmp_path / "legacy.db"
    columns = build_legacy(path)
    return abathur_db.open(path), columns, path


def _upgrade(tmp_path, *variants) -> tuple[abathur_db.Pool, Path]:
    """Build a legacy file with `variants`, open it once, and return the pool and the path."""
    path = tmp_path / "legacy.db"
    build_legacy(path, *variants)
    return abathur_db.open(path), path


def _upgrade_keeping_sql(tmp_path, names: tuple[str, ...], *variants) -> abathur_db.Pool:
    """Upgrade a legacy file with `variants`; check that the objects `names` have the SQL they had; return the pool."""
    path = tmp_path / "legacy.db"
    build_legacy(path, *variants)
    raw = sqlite3.connect(path)
    before = {name: _sql(raw, name) for name in names}
    raw.close()
    pool = abathur_db.open(path)
    assert {name: _sql(pool.connection(), name) for name in names} == before
    assert None not in before.values()
    return pool


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


def test_schema_equals_a_fresh_database_with_legacy_autoincrement_kept(upgraded, tmp_path):
    """After the upgrade the schema is a new database's, except that AUTOINCREMENT stays where it was."""
    pool, _, _ = upgraded
    upgraded_schema = _schema(pool.connection())
    with abathur_db.open(tmp_path / "fresh.db") as fresh:
        fresh_schema = _schema(fresh.connection())
    assert [row[:3] for row in upgraded_schema] == [row[:3] for row in fresh_schema]
    for (kind, name, _, sql), (*_, fresh_sql) in zip(upgraded_schema, fresh_schema):
        if kind == "table" and name in AUTOINCREMENT_TABLES:
            assert sql == fresh_sql.replace("id INTEGER PRIMARY KEY", "id INTEGER PRIMARY KEY AUTOINCREMENT", 1)
        else:
            assert sql == fresh_sql, name


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
    assert _backups(path) == [pool.backup_path]  # nothing else beside it: no partial copy


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
    """The upgraded file runs in WAL mode, with renames back to rewriting references, and a second open applies nothing."""
    pool, _, path = upgraded
    conn = pool.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [conn.execute(f"PRAGMA {name}").fetchone()[0] for name in
            ("legacy_alter_table", "foreign_keys", "ignore_check_constraints", "busy_timeout")] == [0, 1, 0, 5000]
    pool.close()
    with abathur_db.open(path) as again:
        assert again.applied == [] and again.backup_path is None


def test_unparseable_legacy_timestamp_is_kept_and_reported(tmp_path):
    """A legacy value that breaks a rule is copied as it was and reported, never dropped."""
    pool, _ = _upgrade(tmp_path, Variant("UPDATE metrics SET timestamp = 'yesterday-ish' WHERE id = 2;"))
    conn = pool.connection()
    assert conn.execute("SELECT timestamp FROM metrics WHERE id = 2").fetchone()[0] == "yesterday-ish"
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("CHECK constraint failed in metrics",)]
    assert rule_violations(conn) == [{"table": "metrics", "row_key": "id", "row": 2, "column": "timestamp",
                                      "value": "yesterday-ish", "rule": "CHECK timestamp"}]


# ---------------------------------------------------------------------------------------
# What users left in their files.


def test_user_columns_keep_their_values_and_definitions(tmp_path):
    """Columns a user added to owned tables survive with every value, their default, collation and CHECK."""
    pool, _ = _upgrade(tmp_path, "extra_column")
    conn = pool.connection()
    assert conn.execute("SELECT id, owner FROM tasks ORDER BY id").fetchall() == [
        ("t1", "team-t1"), ("t2", "nobody"), ("t3", "team-t3")]
    assert conn.execute("SELECT id, reviewed FROM audit ORDER BY id").fetchall() == [(1, 0), (2, 1)]
    assert "owner TEXT COLLATE NOCASE DEFAULT 'nobody' CHECK (length(owner) < 40)" in _sql(conn, "tasks")
    assert conn.execute("SELECT id FROM tasks WHERE owner = 'TEAM-T3'").fetchall() == [("t3",)]
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        conn.execute("UPDATE tasks SET owner = ? WHERE id = 't1'", ("x" * 50,))
    created = abathur_db.tasks.create(conn, "after the upgrade")
    assert conn.execute("SELECT owner FROM tasks WHERE id = ?", (created["id"],)).fetchone()[0] == "nobody"
    assert abathur_db.integrity_check(conn) == []


def test_user_indexes_and_triggers_are_put_back(tmp_path):
    """The user's indexes and triggers on owned tables exist again, with the same SQL, and work."""
    pool = _upgrade_keeping_sql(tmp_path, ("user_tasks_by_creator", "user_agents_name", "user_tasks_status_log"),
                                "user_index", "user_trigger")
    conn = pool.connection()
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT prompt FROM tasks WHERE created_by = 'alice'").fetchall()
    assert "user_tasks_by_creator" in plan[0][-1]
    conn.execute("UPDATE tasks SET status = 'completed' WHERE id = 't3'")
    assert conn.execute("SELECT * FROM task_log").fetchall() == [("t3", "completed")]
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute("UPDATE agents SET name = 'ALPHA' WHERE id = 'a-orphan'")


def test_user_view_table_and_trigger_keep_naming_tasks(tmp_path):
    """A view, a foreign key of a user table and a trigger of a user table still name tasks, and work."""
    pool = _upgrade_keeping_sql(tmp_path, ("user_open_tasks", "task_notes", "task_notes_flag"),
                                "user_view", "user_fk_table")
    conn = pool.connection()
    assert [row[2] for row in conn.execute("PRAGMA foreign_key_list(task_notes)")] == ["tasks"]
    assert conn.execute("SELECT id, status, agents FROM user_open_tasks ORDER BY id").fetchall() == [
        ("t2", "pending", 0), ("t3", "running", 0)]
    conn.execute("INSERT INTO task_notes (task_id, note) VALUES ('t2', 'after the upgrade')")
    assert conn.execute("SELECT error_message FROM tasks WHERE id = 't2'").fetchone()[0] == "has notes"
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("INSERT INTO task_notes (task_id, note) VALUES ('nobody', 'x')")
    conn.execute("DELETE FROM audit WHERE task_id = 't1'")
    conn.execute("DELETE FROM agents WHERE task_id = 't1'")
    conn.execute("DELETE FROM state WHERE task_id = 't1'")
    conn.execute("UPDATE tasks SET parent_task_id = NULL WHERE parent_task_id = 't1'")
    conn.execute("DELETE FROM task_dependencies WHERE depends_on_task_id = 't1'")
    conn.execute("DELETE FROM tasks WHERE id = 't1'")
    assert conn.execute("SELECT task_id FROM task_notes ORDER BY id").fetchall() == [("t3",), ("t2",)]


def test_null_where_a_default_now_applies_becomes_the_default(tmp_path):
    """A NULL max_retries (allowed by an earlier release) no longer blocks the upgrade: it becomes 3."""
    pool, _ = _upgrade(tmp_path, "null_max_retries")
    conn = pool.connection()
    assert conn.execute("SELECT id, max_retries FROM tasks ORDER BY id").fetchall() == [
        ("t1", 3), ("t2", 3), ("t3", 3)]
    assert abathur_db.integrity_check(conn) == []


def test_non_json_text_is_kept_and_reported_in_every_json_column(tmp_path):
    """Text that is not JSON, in each JSON column, is kept as it was and reported with its row and column."""
    pool, _ = _upgrade(tmp_path, "non_json")
    conn = pool.connection()
    reported = {(v["table"], v["row_key"], v["row"], v["column"]): v["value"] for v in rule_violations(conn)}
    assert reported == NON_JSON
    for (table, key, row, column), value in NON_JSON.items():
        assert conn.execute(f"SELECT {column} FROM {table} WHERE {key} = ?", (row,)).fetchone()[0] == value
    assert conn.execute("SELECT unmet_dependencies FROM tasks WHERE id = 't-json'").fetchone()[0] == 0


def test_out_of_enum_status_and_state_are_kept_and_reported(tmp_path):
    """A task status and an agent state outside today's enumerations are kept and reported."""
    pool, _ = _upgrade(tmp_path, "out_of_enum")
    conn = pool.connection()
    reported = {(v["table"], v["row_key"], v["row"], v["column"]): v["value"] for v in rule_violations(conn)}
    assert reported == OUT_OF_ENUM
    assert {v["rule"] for v in rule_violations(conn)} == {"CHECK status", "CHECK state"}


@pytest.mark.parametrize("table, next_id", [("audit", 5), ("metrics", 5), ("state", 2)])
def test_autoincrement_is_kept_and_deleted_ids_are_not_handed_out_again(tmp_path, table, next_id):
    """AUTOINCREMENT survives the rebuild with its counter: ids of deleted rows are never reused."""
    pool, _ = _upgrade(tmp_path, "autoincrement_gaps")
    conn = pool.connection()
    assert "AUTOINCREMENT" in _sql(conn, table)
    if table == "audit":
        new_id = abathur_db.audit.record(conn, "after", task_id="t1")["id"]
    elif table == "metrics":
        new_id = abathur_db.metrics.record(conn, "after", 1.0)["id"]
    else:
        abathur_db.state.set(conn, "t3", "after", 1)
        new_id = conn.execute("SELECT id FROM state WHERE key = 'after'").fetchone()[0]
    assert new_id == next_id


def test_every_variant_at_once(tmp_path):
    """A file holding every variant upgrades in one go; only the kept rule breakers are reported."""
    pool, path = _upgrade(tmp_path, *VARIANTS)
    conn = pool.connection()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == FILES[-1].version
    assert set(abathur_db.integrity_check(conn)) == {f"CHECK constraint failed in {table}" for table in TABLE_ROWS}
    reported = {(v["table"], v["row_key"], v["row"], v["column"]): v["value"] for v in rule_violations(conn)}
    assert reported == {**NON_JSON, **OUT_OF_ENUM}
    assert len(_backups(path)) == 1


# ---------------------------------------------------------------------------------------
# What cannot be carried over stops the upgrade before anything changes.

_NOT_NULL_WITHOUT_DEFAULT = Variant(
    "PRAGMA writable_schema = ON;"
    " UPDATE sqlite_master SET sql = replace(sql, ' DEFAULT ''T-0''', '') WHERE name = 'tasks';"
    " PRAGMA writable_schema = OFF;",
    ddl=(("dependencies TEXT,", "dependencies TEXT, ticket TEXT NOT NULL DEFAULT 'T-0',"),),
)


@pytest.mark.parametrize("variant, named", [
    pytest.param(Variant(ddl=(("dependencies TEXT,", "dependencies TEXT, ticket TEXT UNIQUE,"),)),
                 "tasks.ticket: cannot be carried over with ALTER TABLE ADD COLUMN (Cannot add a UNIQUE column)",
                 id="unique-column"),
    pytest.param(_NOT_NULL_WITHOUT_DEFAULT, "tasks.ticket: a NOT NULL column without a default", id="not-null-column"),
    pytest.param(Variant(ddl=(("dependencies TEXT,", "dependencies TEXT, ticket TEXT, CHECK (ticket <> prompt),"),)),
                 "tasks: the table constraint 'CHECK (ticket <> prompt)' on column ticket", id="table-constraint"),
    pytest.param(Variant("ALTER TABLE tasks ADD COLUMN session_id TEXT; UPDATE tasks SET session_id = 'mine';"),
                 "tasks.session_id: the upgrade defines a column of this name", id="column-named-like-a-new-one"),
    pytest.param(Variant("UPDATE tasks SET prompt = NULL WHERE id = 't2';",
                         ddl=(("prompt TEXT NOT NULL", "prompt TEXT"),)),
                 "tasks.prompt: 1 row(s) hold NULL, which the new schema refuses and has no default for (rows 't2')",
                 id="null-without-default"),
    pytest.param(Variant("ALTER TABLE tasks ADD COLUMN lease TEXT; UPDATE tasks SET lease = 'mine';"),
                 "tasks.lease: the upgrade adds a column of this name", id="column-named-like-an-added-one"),
    pytest.param(Variant("CREATE TABLE sessions (id TEXT);"), "table sessions exists already", id="table-name"),
    pytest.param(Variant("CREATE INDEX idx_tasks_session_id ON tasks (created_by);"),
                 "index idx_tasks_session_id exists already", id="index-name"),
    pytest.param(Variant("CREATE INDEX idx_audit_agent_id ON audit (agent_id, timestamp);"),
                 "index idx_audit_agent_id exists already", id="index-name-of-a-later-file"),
])
def test_what_cannot_be_carried_over_stops_the_upgrade_before_any_change(tmp_path, variant, named):
    """An object the upgrade would lose is named in a SchemaError; the file is untouched and no backup written."""
    path = tmp_path / "legacy.db"
    build_legacy(path, variant)
    before = _contents(path)
    with pytest.raises(SchemaError, match="nothing was changed") as caught:
        abathur_db.open(path)
    assert named in str(caught.value)
    assert _contents(path) == before
    assert _backups(path) == []


# ---------------------------------------------------------------------------------------
# Versions 3 and 4 to the latest: 0004 rebuilds memory_entries by the same mechanism, 0005
# adds a column to tasks in place.


def _open_at_version(path, version: int = 3) -> sqlite3.Connection:
    """Create a database with the files up to `version` only; return a raw connection to it."""
    old = path.parent / f"schema-v{version}"
    old.mkdir()
    for file in FILES[:version]:
        shutil.copy(schema.schema_dir() / file.name, old / file.name)
    abathur_db.open(path, schema_dir=old).close()
    return sqlite3.connect(path, isolation_level=None)


_open_at_version_3 = _open_at_version


def _fill_at_version(path, version: int) -> dict[str, tuple[list[str], list]]:
    """Write rows to every table by raw SQL (today's code needs today's schema); return their columns and rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript("""
            INSERT INTO sessions (id, app_name, user_id) VALUES ('s1', 'app', 'user');
            INSERT INTO tasks (id, prompt, session_id) VALUES ('first', 'p', 's1');
            INSERT INTO tasks (id, prompt, dependencies) VALUES ('second', 'p', '["first"]');
            INSERT INTO tasks (id, prompt, status, started_at) VALUES ('old-run', 'p', 'running',
                '2024-01-01T00:00:00.000Z');
            INSERT INTO tasks (id, prompt, status, completed_at) VALUES ('old-done', 'p', 'completed',
                '2024-01-01T00:00:00.000Z');
            INSERT INTO agents (id, name, specialization, task_id, model, session_id)
                VALUES ('a1', 'w', 's', 'first', 'm', 's1');
            INSERT INTO memory_entries (namespace, key, value, memory_type)
                VALUES ('ns', 'a', '1', 'semantic'), ('ns', 'b', '2', 'episodic');
            INSERT INTO audit (task_id, agent_id, action_type, memory_entry_id, memory_operation_type)
                VALUES ('first', 'a1', 'x', 1, 'create');
            INSERT INTO checkpoints (task_id, iteration, state, session_id) VALUES ('first', 0, '{"i": 0}', 's1');
            INSERT INTO state (task_id, key, value) VALUES ('first', 'k', '[1]');
            INSERT INTO metrics (metric_name, metric_value) VALUES ('m', 1.0);
        """)
        assert conn.execute("SELECT unmet_dependencies FROM tasks WHERE id = 'second'").fetchone() == (1,)
        return _tables(conn)
    finally:
        conn.close()


def _tables(conn, columns: dict[str, list[str]] | None = None) -> dict[str, tuple[list[str], list]]:
    """Return each table's columns (or the `columns` given) and its rows in key order."""
    names = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"
        " AND name <> 'schema_migrations'")]
    found = {}
    for table in names:
        wanted = (columns or {}).get(table) or [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        found[table] = (wanted, conn.execute(f"SELECT {', '.join(wanted)} FROM {table} ORDER BY 1, 2").fetchall())
    return found


@pytest.mark.parametrize("version", [3, 4])
def test_version_3_and_4_databases_upgrade_keeping_every_row(tmp_path, version):
    """A version-3 or -4 database with rows in every table reaches the latest version with every row as it was.

    The tasks claimed before the upgrade keep running, without a lease; the new column is NULL everywhere.
    """
    path = tmp_path / f"v{version}.db"
    _open_at_version(path, version).close()
    before = _fill_at_version(path, version)
    with abathur_db.open(path) as pool:
        assert pool.applied == [file.name for file in FILES[version:]] and pool.backup_path.endswith(".bak")
        assert f".v{version}-" in pool.backup_path
        conn = pool.connection()
        assert _tables(conn, {table: columns for table, (columns, _) in before.items()}) == before
        assert conn.execute("SELECT count(*) FROM tasks WHERE lease IS NOT NULL").fetchone()[0] == 0
        assert abathur_db.integrity_check(conn) == [] and conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert all(check.ok for check in abathur_db.check_catalog(conn))
        assert abathur_db.tasks.get(conn, "old-run")["status"] == "running"
        with pytest.raises(abathur_db.LeaseLostError, match="running without a lease"):
            abathur_db.tasks.complete(conn, "old-run", "0" * 32)
        assert abathur_db.tasks.requeue_stale(conn, now="2100-01-01T00:00:00Z")[0]["id"] == "old-run"


def test_a_users_column_named_like_the_new_one_stops_the_upgrade_unchanged(tmp_path):
    """A column of the user's named lease on tasks is named before the upgrade to 0005 changes or backs up anything."""
    path = tmp_path / "v4.db"
    raw = _open_at_version(path, 4)
    raw.execute("ALTER TABLE tasks ADD COLUMN lease INTEGER")
    raw.close()
    before = _contents(path)
    with pytest.raises(SchemaError, match="nothing was changed") as caught:
        abathur_db.open(path)
    assert "tasks.lease: the upgrade adds a column of this name" in str(caught.value)
    assert _contents(path) == before
    assert _backups(path) == []


def test_memory_entries_rebuild_keeps_the_users_column_index_and_trigger(tmp_path):
    """0004 keeps a user's extra column, index and trigger on memory_entries; an old memory_type is reported."""
    path = tmp_path / "v3.db"
    raw = _open_at_version_3(path)
    raw.executescript("""
        INSERT INTO memory_entries (namespace, key, value, memory_type) VALUES ('ns', 'a', '1', 'semantic');
        INSERT INTO memory_entries (namespace, key, value, memory_type) VALUES ('ns', 'b', '2', 'scratch');
        ALTER TABLE memory_entries ADD COLUMN source TEXT;
        UPDATE memory_entries SET source = 'import-' || key;
        CREATE INDEX user_memory_source ON memory_entries (source);
        CREATE TABLE memory_log (entry INTEGER);
        CREATE TRIGGER user_memory_log AFTER INSERT ON memory_entries BEGIN INSERT INTO memory_log VALUES (NEW.id); END;
    """)
    raw.close()
    pool = abathur_db.open(path)
    conn = pool.connection()
    assert conn.execute("SELECT key, memory_type, source FROM memory_entries ORDER BY id").fetchall() == [
        ("a", "semantic", "import-a"), ("b", "scratch", "import-b")]
    assert _sql(conn, "user_memory_source") == "CREATE INDEX user_memory_source ON memory_entries (source)"
    conn.execute("INSERT INTO memory_entries (namespace, key, value, memory_type) VALUES ('ns', 'c', '3', 'procedural')")
    assert conn.execute("SELECT entry FROM memory_log").fetchall() == [(3,)]
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed: memory_type"):
        conn.execute("INSERT INTO memory_entries (namespace, key, value, memory_type) VALUES ('ns', 'd', '4', 'x')")
    assert rule_violations(conn) == [{"table": "memory_entries", "row_key": "id", "row": 2, "column": "memory_type",
                                      "value": "scratch", "rule": "CHECK memory_type"}]


def test_version_4_indexes_serve_u4_and_agent_deletion(pool):
    """U4's new order needs no sort, and deleting an agent looks up its audit rows in idx_audit_agent_id."""
    conn = pool.connection()
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT id FROM audit WHERE memory_entry_id = 1 AND timestamp >= ''"
                        " ORDER BY timestamp DESC, id DESC LIMIT 5").fetchall()
    assert [row[-1] for row in plan] == [
        "SEARCH audit USING COVERING INDEX idx_audit_memory_entry_id (memory_entry_id=? AND timestamp>?)"]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'idx_audit_agent_id'").fetchone()[0]
    program = conn.execute("EXPLAIN DELETE FROM agents WHERE id = 'a'").fetchall()
    assert any(op == "OpenRead" and p2 == root for _, op, _, p2, *_ in program)


# ---------------------------------------------------------------------------------------
# A full disk, retries, and the backup.


def _limited_connect(extra_pages: int):
    """Return pool.connect, but with the connection's database limited to `extra_pages` more pages."""
    real = pool_module.connect

    def connect(path, **kwargs):
        conn = real(path, **kwargs)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}").fetchall()
        return conn

    return connect


@pytest.mark.slow
def test_full_disk_at_any_phase_raises_storage_full_and_changes_nothing(tmp_path, monkeypatch):
    """However little room is left, the upgrade raises StorageFullError and leaves the file legacy, or succeeds."""
    template = tmp_path / "template.db"
    build_legacy(template, *VARIANTS)
    outcomes = []
    for extra in range(0, 120, 3):
        path = tmp_path / f"full-{extra}.db"
        shutil.copy(template, path)
        with monkeypatch.context() as patch:
            patch.setattr(pool_module, "connect", _limited_connect(extra))
            try:
                abathur_db.open(path).close()
                outcomes.append("upgraded")
            except StorageFullError as exc:
                assert "was not changed" in str(exc), exc
                outcomes.append("full")
        raw = sqlite3.connect(path)
        version, tasks = raw.execute("SELECT (SELECT user_version FROM pragma_user_version),"
                                     " (SELECT count(*) FROM tasks)").fetchone()
        raw.close()
        assert (version, outcomes[-1]) in ((0, "full"), (FILES[-1].version, "upgraded")), (extra, version)
        assert tasks == len(TABLE_ROWS["tasks"]) + 2
    assert "full" in outcomes and outcomes[-1] == "upgraded", outcomes
    assert outcomes == sorted(outcomes), outcomes  # more room never fails where less succeeded


def test_full_disk_while_writing_the_backup_leaves_nothing_behind(tmp_path, monkeypatch):
    """A backup that runs out of room raises StorageFullError; no copy, partial or whole, is left."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    before = _contents(path)

    def tiny_copy(partial):
        conn = sqlite3.connect(partial)
        conn.execute("PRAGMA max_page_count = 3").fetchall()
        return conn

    monkeypatch.setattr(maintenance, "_open_copy", tiny_copy)
    with pytest.raises(StorageFullError, match="full"):
        abathur_db.open(path)
    assert _contents(path) == before
    assert _backups(path) == []


def test_retried_upgrade_reuses_the_complete_backup(tmp_path, monkeypatch):
    """An upgrade that failed after its backup is retried with the same backup, not a second one."""
    path = tmp_path / "legacy.db"
    build_legacy(path, "extra_column")
    with monkeypatch.context() as patch:
        patch.setattr(pool_module, "connect", _limited_connect(0))
        with pytest.raises(StorageFullError):
            abathur_db.open(path)
    (first,) = _backups(path)
    with abathur_db.open(path) as pool:
        assert pool.backup_path == first
    assert _backups(path) == [first]


def test_a_backup_of_other_contents_is_not_reused(tmp_path, monkeypatch):
    """When rows changed since a failed attempt, the retry writes a fresh backup holding them."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    with monkeypatch.context() as patch:
        patch.setattr(pool_module, "connect", _limited_connect(0))
        with pytest.raises(StorageFullError):
            abathur_db.open(path)
    (first,) = _backups(path)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("INSERT INTO metrics (timestamp, metric_name, metric_value) VALUES ('x', 'late', 1)")
    raw.close()
    with abathur_db.open(path) as pool:
        assert pool.backup_path != first
        copy = sqlite3.connect(pool.backup_path)
        assert copy.execute("SELECT metric_name FROM metrics WHERE metric_name = 'late'").fetchall() == [("late",)]
        copy.close()


def test_a_retried_upgrade_from_version_3_reuses_its_backup(tmp_path, monkeypatch):
    """A version-3 database (WITHOUT ROWID table included) whose upgrade failed reuses its backup on the retry."""
    path = tmp_path / "v3.db"
    _open_at_version_3(path).close()
    _fill_at_version(path, 3)
    with monkeypatch.context() as patch:
        patch.setattr(pool_module, "connect", _limited_connect(0))
        with pytest.raises(StorageFullError):
            abathur_db.open(path)
    (first_backup,) = _backups(path)
    assert ".v3-" in first_backup
    with abathur_db.open(path) as pool:
        assert pool.backup_path == first_backup and pool.applied == [file.name for file in FILES[3:]]


def test_a_file_named_like_a_backup_that_is_not_one_is_never_reused(tmp_path):
    """Text in a file named like a backup of this version is passed over: a real backup is written."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    impostor = Path(f"{path}.v0-20991231T000000000Z.bak")
    impostor.write_text("not a database\n" * 100)
    with abathur_db.open(path) as pool:
        assert pool.backup_path != str(impostor)
        copy = sqlite3.connect(pool.backup_path)
        assert copy.execute("SELECT count(*) FROM tasks").fetchone()[0] == len(TABLE_ROWS["tasks"])
        copy.close()
    assert impostor.read_text().startswith("not a database")


def test_a_killed_backups_partial_file_is_removed_and_never_reused(tmp_path):
    """A partial copy left by a killed backup does not look like a backup, and the next upgrade removes it."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    partial = Path(f"{path}.v0-20240101T000000000Z.bak.abc123.partial")
    partial.write_bytes(b"")
    with abathur_db.open(path) as pool:
        assert _backups(path) == [pool.backup_path]


def test_logs_one_info_line_per_phase_with_row_counts(tmp_path, caplog):
    """An upgrade logs its start, what it rebuilds and keeps (with row counts), the backup, each file and the end."""
    path = tmp_path / "legacy.db"
    build_legacy(path, "extra_column", "null_max_retries")
    with caplog.at_level(logging.INFO, logger="abathur_db"):
        abathur_db.open(path).close()
    lines = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert "upgrading from schema version 0" in lines[0]
    rebuild = next(line for line in lines if FILES[2].name in line and "rebuilds" in line)
    assert "tasks (3 rows; keeps column owner; 1 NULL max_retries" in rebuild
    assert "audit (2 rows; keeps column reviewed, AUTOINCREMENT)" in rebuild
    assert any("backup written to" in line for line in lines)
    assert [line.split(" ran ")[1].split()[0] for line in lines if " ran " in line] == [f.name for f in FILES]
    assert f"at schema version {FILES[-1].version}" in lines[-1]


# ---------------------------------------------------------------------------------------
# Other processes: a kill at any moment, and an opener arriving mid-upgrade.

ROOT = Path(abathur_db.__file__).resolve().parent.parent
TIMEOUT = 120  # seconds; reached only when something hangs

UPGRADING_CHILD = """
    import logging, sys, time
    import abathur_db

    class Report(logging.Handler):
        def emit(self, record):
            print(record.getMessage(), flush=True)
            if len(sys.argv) > 2 and sys.argv[2] in record.getMessage():
                time.sleep(float(sys.argv[3]))  # a slow disk: the upgrade holds the write lock longer

    logging.getLogger("abathur_db").addHandler(Report())
    logging.getLogger("abathur_db").setLevel(logging.INFO)
    started = time.monotonic()
    with abathur_db.open(sys.argv[1]) as pool:
        tasks = pool.connection().execute("SELECT count(*) FROM tasks").fetchone()[0]
        print("opened", len(pool.applied), tasks, round(time.monotonic() - started, 1), flush=True)
"""


def _child(*args: str) -> subprocess.Popen:
    """Start UPGRADING_CHILD on a database path in a new interpreter that imports this checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(UPGRADING_CHILD), *map(str, args)],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _state_after_kill(path, tasks: int) -> int:
    """Check that the killed upgrade left the file legacy or upgraded, with every row; return its version."""
    raw = sqlite3.connect(path)
    try:
        version = raw.execute("PRAGMA user_version").fetchone()[0]
        ledger = raw.execute("SELECT count(*) FROM sqlite_master WHERE name = 'schema_migrations'").fetchone()[0]
        assert (version, ledger) in ((0, 0), (FILES[-1].version, 1))
        assert raw.execute("SELECT count(*) FROM tasks").fetchone()[0] == tasks
        assert raw.execute("SELECT count(*) FROM tasks WHERE owner IS NOT NULL").fetchone()[0] == tasks
        assert _sql(raw, "user_tasks_by_creator") is not None and _sql(raw, "user_tasks_status_log") is not None
    finally:
        raw.close()
    backups = [p for p in _backups(path) if p.endswith(".bak")]
    assert len(backups) <= 1, backups  # a restart loop reuses its backup
    for finished in backups:  # whatever is named like a backup is a whole one
        copy = sqlite3.connect(Path(finished).absolute().as_uri() + "?immutable=1", uri=True)
        try:
            assert maintenance.structural_problems(abathur_db.integrity_check(copy, quick=True)) == []
            assert copy.execute("SELECT count(*) FROM tasks").fetchone()[0] == tasks
        finally:
            copy.close()
    return version


@pytest.mark.slow
def test_sigkill_at_random_moments_of_an_upgrade_leaves_it_legacy_or_upgraded(tmp_path):
    """Upgrades killed at random moments leave the file legacy or upgraded, all rows there, and one whole backup at most."""
    seed = random.SystemRandom().randrange(1, 2**31)
    rng = random.Random(seed)
    print(f"upgrade kill seed: {seed}")
    template, path = tmp_path / "template.db", tmp_path / "legacy.db"
    build_large_legacy(template, 20_000, "extra_column", "user_index", "user_trigger", "user_fk_table", "non_json")
    conn = sqlite3.connect(template)
    tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
    conn.close()
    shutil.copy(template, tmp_path / "probe.db")
    probe = _child(tmp_path / "probe.db")
    probe.stdout.readline()
    started = time.monotonic()
    assert probe.wait(timeout=TIMEOUT) == 0
    duration = time.monotonic() - started  # how long an upgrade runs once it holds the lock
    probe.stdout.close()
    probe.stderr.close()
    shutil.copy(template, path)
    outcomes = []
    for _ in range(12):
        child = _child(path)
        assert "upgrading from schema version" in child.stdout.readline(), f"seed {seed}: {child.stderr.read()}"
        try:
            child.wait(timeout=rng.uniform(0.0, duration))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=TIMEOUT)
        child.stdout.close()
        child.stderr.close()
        outcomes.append(_state_after_kill(path, tasks))
        if outcomes[-1]:  # upgraded before the kill: start again from the legacy file
            for leftover in (f"{path}-wal", f"{path}-shm"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            shutil.copy(template, path)
    assert outcomes.count(0) >= 3, (seed, outcomes)
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == tasks
        assert conn.execute("SELECT count(*) FROM task_notes").fetchone()[0] == 2
        assert pool.backup_path in _backups(path)


@pytest.mark.slow
def test_an_opener_waits_for_another_processs_long_upgrade_of_100k_tasks(tmp_path):
    """A process opening a 100k-task file while another upgrades it for longer than busy_timeout waits, then opens it."""
    path = tmp_path / "large.db"
    build_large_legacy(path, 100_000)
    pause = pool_module.BUSY_TIMEOUT_SECONDS + 1
    upgrading = _child(path, f"{FILES[2].name} rebuilds", pause)
    try:
        for line in upgrading.stdout:  # the upgrade holds the write lock from its first line on
            if "rebuilds" in line:
                break
        opener = _child(path)
        opener_out, opener_err = opener.communicate(timeout=TIMEOUT)
        upgrading_out, upgrading_err = upgrading.communicate(timeout=TIMEOUT)
    finally:
        upgrading.kill()
    assert upgrading.returncode == 0 and opener.returncode == 0, upgrading_err + opener_err
    assert "another connection is writing (upgrading the schema?); waiting up to 600 s" in opener_out
    _, applied, tasks, waited = opener_out.splitlines()[-1].split()
    assert (applied, tasks) == ("0", str(100_000 + len(TABLE_ROWS["tasks"])))
    assert float(waited) > pool_module.BUSY_TIMEOUT_SECONDS  # it outwaited busy_timeout, without a BusyError
    assert upgrading_out.splitlines()[-1].split()[:2] == ["opened", str(len(FILES))]
