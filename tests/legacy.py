"""Database files as the earlier Abathur releases left them, with the variants real users add.

The tables are written out from the SPEC's description, not taken from the
package's schema files, so that a mistake there cannot hide here. `build_legacy`
writes the clean file; each entry of VARIANTS adds one thing a user or an old
release may have left in it.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass

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


def iso(offset_seconds: int, whole: bool = False) -> str:
    """Return a timestamp as the earlier releases wrote it: isoformat() with '+00:00'."""
    moment = T0 + dt.timedelta(seconds=offset_seconds)
    return (moment.replace(microsecond=0) if whole else moment).isoformat()


TABLE_ROWS = {
    "tasks": [
        ("t1", "first; DROP TABLE tasks; --", "general", 9, "completed", '{"a": 1}', '{"ok": true}', None,
         0, 3, 3600, iso(0), iso(1), iso(2), iso(2), "alice", None, "[]"),
        ("t2", "waits on t1 and t3", "coder", 5, "pending", "{}", None, None,
         0, 3, 3600, iso(3, whole=True), None, None, iso(3, whole=True), None, None, '["t1", "t3"]'),
        ("t3", "running 'quoted' ünïcode", "general", 7, "running", "[1, 2]", None, None,
         1, 3, 60, iso(4), iso(5), None, iso(5), None, "t1", None),
    ],
    "agents": [
        ("a1", "alpha", "coding", "t1", "terminated", "m-1", iso(1), iso(2), '{"tokens": 10}'),
        ("a-orphan", "ghost", "none", "no-such-task", "idle", "m-1", iso(6, whole=True), None, None),
    ],
    "state": [(1, "t1", "progress", '{"step": 3}', iso(1), iso(2))],
    "audit": [
        (1, iso(1), "a1", "t1", "spawn", '{"x": [1, 2]}', "ok"),
        (2, iso(2), None, "t3", "note", None, None),
    ],
    "metrics": [(1, iso(1), "latency_ms", 12.5, '{"host": "h1"}'), (2, iso(2), "count", 0.0, None)],
    "checkpoints": [("t3", 0, '{"i": 0}', iso(4)), ("t3", 1, '{"i": 1}', iso(5))],
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
AUTOINCREMENT_TABLES = ("state", "audit", "metrics")


@dataclass(frozen=True)
class Variant:
    """One thing a legacy file may hold beyond the clean shape: DDL edits, then SQL run after the rows."""

    sql: str = ""
    ddl: tuple[tuple[str, str], ...] = ()  # (text, replacement) in LEGACY_DDL


# Values that break today's rules, by (table, key column, key, column): each is kept and reported.
NON_JSON = {
    ("tasks", "id", "t-json", "input_data"): "{not json",
    ("tasks", "id", "t-json", "result_data"): "plain text",
    ("tasks", "id", "t-json", "dependencies"): "t1,t3",
    ("agents", "id", "a-json", "resource_usage"): "{'tokens': 1}",
    ("state", "id", 7, "value"): "undefined",
    ("audit", "id", 7, "action_data"): "[1, 2",
    ("metrics", "id", 7, "labels"): "host=h1",
    ("checkpoints", "rowid", 3, "state"): "{{",
}
OUT_OF_ENUM = {
    ("tasks", "id", "t-done", "status"): "done",
    ("agents", "id", "a-dirty", "state"): "--dirty",
}

VARIANTS = {
    # A column the user added to tasks and one to audit, with values and constraints.
    "extra_column": Variant("""
        ALTER TABLE tasks ADD COLUMN owner TEXT COLLATE NOCASE DEFAULT 'nobody' CHECK (length(owner) < 40);
        UPDATE tasks SET owner = 'team-' || id WHERE id <> 't2';
        ALTER TABLE audit ADD COLUMN reviewed INTEGER NOT NULL DEFAULT 0;
        UPDATE audit SET reviewed = 1 WHERE id = 2;
    """),
    "user_index": Variant("""
        CREATE INDEX user_tasks_by_creator ON tasks (created_by, prompt) WHERE created_by IS NOT NULL;
        CREATE UNIQUE INDEX user_agents_name ON agents (name COLLATE NOCASE);
    """),
    "user_trigger": Variant("""
        CREATE TABLE task_log (task_id TEXT, status TEXT);
        CREATE TRIGGER user_tasks_status_log AFTER UPDATE OF status ON tasks
        BEGIN INSERT INTO task_log VALUES (NEW.id, NEW.status); END;
    """),
    "user_view": Variant("""
        CREATE VIEW user_open_tasks AS
        SELECT t.id, t.status, count(a.id) AS agents
        FROM tasks AS t LEFT JOIN agents AS a ON a.task_id = t.id
        WHERE t.status <> 'completed' GROUP BY t.id;
    """),
    # A user table whose foreign key points at tasks, and its trigger that writes to tasks.
    "user_fk_table": Variant("""
        CREATE TABLE task_notes (
            id INTEGER PRIMARY KEY, task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE, note TEXT);
        INSERT INTO task_notes (task_id, note) VALUES ('t1', 'first note'), ('t3', 'second note');
        CREATE TRIGGER task_notes_flag AFTER INSERT ON task_notes
        BEGIN UPDATE tasks SET error_message = 'has notes' WHERE id = NEW.task_id; END;
    """),
    # A release whose DDL let max_retries be NULL, and a row that used it.
    "null_max_retries": Variant(
        "UPDATE tasks SET max_retries = NULL WHERE id = 't2';",
        ddl=(("max_retries INTEGER NOT NULL DEFAULT 3", "max_retries INTEGER DEFAULT 3"),),
    ),
    "non_json": Variant(f"""
        INSERT INTO tasks (id, prompt, status, input_data, result_data, submitted_at, last_updated_at, dependencies)
        VALUES ('t-json', 'bad json', 'pending', '{{not json', 'plain text', '{iso(7)}', '{iso(7)}', 't1,t3');
        INSERT INTO agents (id, name, specialization, task_id, state, model, spawned_at, resource_usage)
        VALUES ('a-json', 'beta', 'coding', 't-json', 'idle', 'm-1', '{iso(7)}', '{{''tokens'': 1}}');
        INSERT INTO state (id, task_id, key, value, created_at, updated_at)
        VALUES (7, 't-json', 'k', 'undefined', '{iso(7)}', '{iso(7)}');
        INSERT INTO audit (id, timestamp, agent_id, task_id, action_type, action_data)
        VALUES (7, '{iso(7)}', 'a-json', 't-json', 'note', '[1, 2');
        INSERT INTO metrics (id, timestamp, metric_name, metric_value, labels) VALUES (7, '{iso(7)}', 'm', 1, 'host=h1');
        INSERT INTO checkpoints (task_id, iteration, state, created_at) VALUES ('t-json', 0, '{{{{', '{iso(7)}');
    """),
    "out_of_enum": Variant(f"""
        INSERT INTO tasks (id, prompt, status, input_data, submitted_at, last_updated_at)
        VALUES ('t-done', 'an old status', 'done', '{{}}', '{iso(8)}', '{iso(8)}');
        INSERT INTO agents (id, name, specialization, task_id, state, model, spawned_at)
        VALUES ('a-dirty', 'gamma', 'coding', 't-done', '--dirty', 'm-1', '{iso(8)}');
    """),
    # AUTOINCREMENT handed out ids 3 and 4 in audit and metrics; their rows were deleted since.
    "autoincrement_gaps": Variant(f"""
        INSERT INTO audit (id, timestamp, task_id, action_type) VALUES (3, '{iso(9)}', 't1', 'gone');
        INSERT INTO audit (id, timestamp, task_id, action_type) VALUES (4, '{iso(9)}', 't1', 'gone');
        DELETE FROM audit WHERE id IN (3, 4);
        INSERT INTO metrics (id, timestamp, metric_name, metric_value) VALUES (4, '{iso(9)}', 'gone', 1);
        DELETE FROM metrics WHERE id = 4;
    """),
}


def build_legacy(path, *variants: str | Variant) -> dict[str, list[str]]:
    """Write a legacy database at `path` with the clean rows plus `variants`; return each table's columns."""
    chosen = [VARIANTS[v] if isinstance(v, str) else v for v in variants]
    ddl = LEGACY_DDL
    for variant in chosen:
        for text, replacement in variant.ddl:
            assert text in ddl, text
            ddl = ddl.replace(text, replacement)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a fixture: speed over durability
        conn.executescript(ddl)  # a one-off fixture; no transaction is open here
        columns = {}
        for table, rows in TABLE_ROWS.items():
            columns[table] = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")][:len(rows[0])]
            names, marks = ", ".join(columns[table]), ", ".join("?" * len(rows[0]))
            conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
        for variant in chosen:
            conn.executescript(variant.sql)
    finally:
        conn.close()
    return columns


def build_large_legacy(path, tasks: int, *variants: str | Variant) -> None:
    """Write a legacy database (with `variants`) plus `tasks` tasks, each with an agent and an audit row."""
    build_legacy(path, *variants)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO tasks (id, prompt, priority, status, input_data, submitted_at, last_updated_at, dependencies)"
            " VALUES (?, ?, ?, 'pending', ?, ?, ?, '[]')",
            ((f"bulk-{i:07d}", f"prompt number {i} " + "x" * 100, i % 11, f'{{"n": {i}}}', iso(i), iso(i))
             for i in range(tasks)))
        conn.executemany(
            "INSERT INTO agents (id, name, specialization, task_id, state, model, spawned_at)"
            " VALUES (?, ?, 'coding', ?, 'idle', 'm-1', ?)",
            ((f"agent-{i:07d}", f"worker-{i}", f"bulk-{i:07d}", iso(i)) for i in range(tasks)))
        conn.executemany(
            "INSERT INTO audit (timestamp, agent_id, task_id, action_type, action_data) VALUES (?, ?, ?, 'spawn', ?)",
            ((iso(i), f"agent-{i:07d}", f"bulk-{i:07d}", '{"step": 1}') for i in range(tasks)))
        conn.execute("COMMIT")
    finally:
        conn.close()
