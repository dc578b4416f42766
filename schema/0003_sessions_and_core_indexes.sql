-- The milestone-1 schema: sessions and memory entries, session links on tasks,
-- agents and checkpoints, memory-operation columns on audit, every constraint,
-- the 15 core indexes, and the dependency bookkeeping behind the task queue.
--
-- Every table of 0002 is rebuilt (SQLite cannot add constraints in place): the old
-- table is renamed away, the new one created, the rows copied and the old one
-- dropped. The runner applies this file with foreign keys off, as the rebuild
-- requires; rows that break a rule are copied as they are and reported by
-- verify, never dropped, so CHECK constraints are not enforced during the copy.
--
-- Timestamps: UTC, 'YYYY-MM-DDTHH:MM:SS.mmmZ', fixed width, so that text order is
-- time order. Python writes them in this form, the SQL defaults produce it with
-- strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), and each column checks it. Legacy rows
-- (isoformat with a '+00:00' offset) are rewritten with the same strftime.

PRAGMA ignore_check_constraints = ON;

DROP INDEX IF EXISTS idx_tasks_status_priority;
DROP INDEX IF EXISTS idx_tasks_submitted_at;
DROP INDEX IF EXISTS idx_tasks_parent;
DROP INDEX IF EXISTS idx_tasks_running_timeout;
DROP INDEX IF EXISTS idx_agents_task;
DROP INDEX IF EXISTS idx_agents_state;
DROP INDEX IF EXISTS idx_state_task_key;
DROP INDEX IF EXISTS idx_audit_task;
DROP INDEX IF EXISTS idx_audit_agent;
DROP INDEX IF EXISTS idx_audit_timestamp;
DROP INDEX IF EXISTS idx_metrics_name_timestamp;
DROP INDEX IF EXISTS idx_checkpoints_task;

ALTER TABLE tasks RENAME TO legacy_tasks;
ALTER TABLE agents RENAME TO legacy_agents;
ALTER TABLE state RENAME TO legacy_state;
ALTER TABLE audit RENAME TO legacy_audit;
ALTER TABLE metrics RENAME TO legacy_metrics;
ALTER TABLE checkpoints RENAME TO legacy_checkpoints;

CREATE TABLE sessions (
    id TEXT NOT NULL PRIMARY KEY,
    app_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    project_id TEXT,
    status TEXT NOT NULL DEFAULT 'created'
        CONSTRAINT status CHECK (status IN ('created', 'active', 'paused', 'terminated', 'archived')),
    events TEXT NOT NULL DEFAULT '[]'
        CONSTRAINT events CHECK (json_valid(events) AND json_type(events) = 'array'),
    state TEXT NOT NULL DEFAULT '{}'
        CONSTRAINT state CHECK (json_valid(state) AND json_type(state) = 'object'),
    metadata TEXT NOT NULL DEFAULT '{}'
        CONSTRAINT metadata CHECK (json_valid(metadata) AND json_type(metadata) = 'object'),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT created_at CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    last_update_time TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT last_update_time CHECK (last_update_time GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    terminated_at TEXT
        CONSTRAINT terminated_at CHECK (terminated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    archived_at TEXT
        CONSTRAINT archived_at CHECK (archived_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
);

CREATE TABLE memory_entries (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL
        CONSTRAINT value CHECK (json_valid(value)),
    memory_type TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
        CONSTRAINT version CHECK (typeof(version) = 'integer' AND version > 0),
    is_deleted INTEGER NOT NULL DEFAULT 0
        CONSTRAINT is_deleted CHECK (is_deleted IN (0, 1)),
    metadata TEXT NOT NULL DEFAULT '{}'
        CONSTRAINT metadata CHECK (json_valid(metadata) AND json_type(metadata) = 'object'),
    created_by TEXT,
    updated_by TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT created_at CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT updated_at CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    UNIQUE (namespace, key, version)
);

-- unmet_dependencies counts the entries of `dependencies` whose task is not yet
-- completed; the triggers below keep it right, and the claim index holds only
-- pending tasks whose count is zero, so blocked tasks never slow a claim.
CREATE TABLE tasks (
    id TEXT NOT NULL PRIMARY KEY,
    prompt TEXT NOT NULL,
    agent_type TEXT NOT NULL DEFAULT 'general',
    priority INTEGER NOT NULL DEFAULT 5
        CONSTRAINT priority CHECK (typeof(priority) = 'integer' AND priority BETWEEN 0 AND 10),
    status TEXT NOT NULL DEFAULT 'pending'
        CONSTRAINT status CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    input_data TEXT NOT NULL DEFAULT '{}'
        CONSTRAINT input_data CHECK (json_valid(input_data)),
    result_data TEXT
        CONSTRAINT result_data CHECK (result_data IS NULL OR json_valid(result_data)),
    error_message TEXT,
    retry_count INTEGER NOT NULL DEFAULT 0
        CONSTRAINT retry_count CHECK (typeof(retry_count) = 'integer' AND retry_count >= 0),
    max_retries INTEGER NOT NULL DEFAULT 3
        CONSTRAINT max_retries CHECK (typeof(max_retries) = 'integer' AND max_retries >= 0),
    max_execution_timeout_seconds INTEGER NOT NULL DEFAULT 3600
        CONSTRAINT max_execution_timeout_seconds
        CHECK (typeof(max_execution_timeout_seconds) = 'integer' AND max_execution_timeout_seconds > 0),
    submitted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT submitted_at CHECK (submitted_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    started_at TEXT
        CONSTRAINT started_at CHECK (started_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    completed_at TEXT
        CONSTRAINT completed_at CHECK (completed_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    last_updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT last_updated_at CHECK (last_updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    created_by TEXT,
    parent_task_id TEXT REFERENCES tasks (id),
    dependencies TEXT NOT NULL DEFAULT '[]'
        CONSTRAINT dependencies CHECK (json_valid(dependencies) AND json_type(dependencies) = 'array'),
    session_id TEXT REFERENCES sessions (id) ON DELETE SET NULL,
    unmet_dependencies INTEGER NOT NULL DEFAULT 0
        CONSTRAINT unmet_dependencies CHECK (typeof(unmet_dependencies) = 'integer' AND unmet_dependencies >= 0)
);

-- Which tasks wait on a given task: the reverse of tasks.dependencies, filled by
-- trigger, so that completing a task finds its dependents without a scan.
CREATE TABLE task_dependencies (
    depends_on_task_id TEXT NOT NULL REFERENCES tasks (id),
    task_id TEXT NOT NULL REFERENCES tasks (id),
    PRIMARY KEY (depends_on_task_id, task_id)
) WITHOUT ROWID;

CREATE TABLE agents (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    specialization TEXT NOT NULL,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    state TEXT NOT NULL DEFAULT 'spawning'
        CONSTRAINT state CHECK (state IN ('spawning', 'idle', 'busy', 'terminating', 'terminated')),
    model TEXT NOT NULL,
    spawned_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT spawned_at CHECK (spawned_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    terminated_at TEXT
        CONSTRAINT terminated_at CHECK (terminated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    resource_usage TEXT
        CONSTRAINT resource_usage CHECK (resource_usage IS NULL OR json_valid(resource_usage)),
    session_id TEXT REFERENCES sessions (id) ON DELETE SET NULL
);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT timestamp CHECK (timestamp GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    agent_id TEXT REFERENCES agents (id),
    task_id TEXT REFERENCES tasks (id),
    action_type TEXT NOT NULL,
    action_data TEXT
        CONSTRAINT action_data CHECK (action_data IS NULL OR json_valid(action_data)),
    result TEXT,
    memory_operation_type TEXT
        CONSTRAINT memory_operation_type
        CHECK (memory_operation_type IN ('create', 'update', 'delete', 'consolidate', 'publish')),
    memory_namespace TEXT,
    memory_entry_id INTEGER REFERENCES memory_entries (id) ON DELETE SET NULL
);

-- The key (task_id, iteration) is the unique index idx_checkpoints_task_id_iteration
-- rather than a PRIMARY KEY: a primary key would bring its own automatic index, a
-- second copy of the same B-tree.
CREATE TABLE checkpoints (
    task_id TEXT NOT NULL REFERENCES tasks (id),
    iteration INTEGER NOT NULL
        CONSTRAINT iteration CHECK (typeof(iteration) = 'integer' AND iteration >= 0),
    state TEXT NOT NULL
        CONSTRAINT state CHECK (json_valid(state)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT created_at CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    session_id TEXT REFERENCES sessions (id) ON DELETE SET NULL
);

CREATE TABLE state (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    key TEXT NOT NULL,
    value TEXT NOT NULL
        CONSTRAINT value CHECK (json_valid(value)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT created_at CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT updated_at CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    UNIQUE (task_id, key)
);

CREATE TABLE metrics (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT timestamp CHECK (timestamp GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    metric_name TEXT NOT NULL,
    metric_value REAL NOT NULL
        CONSTRAINT metric_value CHECK (typeof(metric_value) IN ('integer', 'real') AND metric_value >= 0),
    labels TEXT
        CONSTRAINT labels CHECK (labels IS NULL OR (json_valid(labels) AND json_type(labels) = 'object'))
);

-- Copy every legacy row. A timestamp strftime cannot parse is kept as it was.
INSERT INTO tasks (
    id, prompt, agent_type, priority, status, input_data, result_data, error_message,
    retry_count, max_retries, max_execution_timeout_seconds, submitted_at, started_at,
    completed_at, last_updated_at, created_by, parent_task_id, dependencies)
SELECT
    id, prompt, agent_type, priority, status, input_data, result_data, error_message,
    retry_count, max_retries, max_execution_timeout_seconds,
    coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', submitted_at), submitted_at),
    coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', started_at), started_at),
    coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', completed_at), completed_at),
    coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', last_updated_at), last_updated_at),
    created_by, parent_task_id, coalesce(dependencies, '[]')
FROM legacy_tasks;

INSERT INTO agents (
    id, name, specialization, task_id, state, model, spawned_at, terminated_at, resource_usage)
SELECT
    id, name, specialization, task_id, state, model,
    coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', spawned_at), spawned_at),
    coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', terminated_at), terminated_at),
    resource_usage
FROM legacy_agents;

INSERT INTO state (id, task_id, key, value, created_at, updated_at)
SELECT
    id, task_id, key, value,
    coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at),
    coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', updated_at), updated_at)
FROM legacy_state;

INSERT INTO audit (id, timestamp, agent_id, task_id, action_type, action_data, result)
SELECT
    id, coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', timestamp), timestamp),
    agent_id, task_id, action_type, action_data, result
FROM legacy_audit;

INSERT INTO metrics (id, timestamp, metric_name, metric_value, labels)
SELECT
    id, coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', timestamp), timestamp),
    metric_name, metric_value, labels
FROM legacy_metrics;

INSERT INTO checkpoints (task_id, iteration, state, created_at)
SELECT
    task_id, iteration, state,
    coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at)
FROM legacy_checkpoints;

DROP TABLE legacy_checkpoints;
DROP TABLE legacy_metrics;
DROP TABLE legacy_audit;
DROP TABLE legacy_state;
DROP TABLE legacy_agents;
DROP TABLE legacy_tasks;

-- Dependencies recorded by earlier releases: fill the reverse table and the counts.
INSERT INTO task_dependencies (depends_on_task_id, task_id)
SELECT DISTINCT d.value, t.id
FROM tasks AS t, json_each(t.dependencies) AS d
WHERE t.dependencies <> '[]' AND json_valid(t.dependencies) AND json_type(t.dependencies) = 'array'
    AND d.value IS NOT NULL;

UPDATE tasks SET unmet_dependencies = waiting.n
FROM (
    SELECT d.task_id, count(*) AS n
    FROM task_dependencies AS d LEFT JOIN tasks AS p ON p.id = d.depends_on_task_id
    WHERE p.status IS NOT 'completed'
    GROUP BY d.task_id
) AS waiting
WHERE tasks.id = waiting.task_id;

PRAGMA ignore_check_constraints = OFF;

-- The 15 core indexes, each chosen for the query catalog (docs/query_catalog.md).
-- Columns that are often NULL get partial indexes: an equality on the column
-- still uses them, and rows without a link cost no index write.
CREATE INDEX idx_tasks_status_priority ON tasks (status, priority DESC, submitted_at);
CREATE INDEX idx_tasks_session_id ON tasks (session_id, submitted_at) WHERE session_id IS NOT NULL;
CREATE INDEX idx_tasks_submitted_at ON tasks (submitted_at);
CREATE INDEX idx_tasks_parent_task_id ON tasks (parent_task_id, submitted_at) WHERE parent_task_id IS NOT NULL;

CREATE INDEX idx_agents_task_id ON agents (task_id, spawned_at);
CREATE INDEX idx_agents_session_id ON agents (session_id, spawned_at) WHERE session_id IS NOT NULL;
CREATE INDEX idx_agents_spawned_at ON agents (spawned_at);

CREATE INDEX idx_audit_task_id ON audit (task_id, timestamp) WHERE task_id IS NOT NULL;
CREATE INDEX idx_audit_timestamp ON audit (timestamp);
CREATE INDEX idx_audit_memory_operation ON audit (memory_operation_type, timestamp)
    WHERE memory_operation_type IS NOT NULL;
CREATE INDEX idx_audit_memory_entry_id ON audit (memory_entry_id) WHERE memory_entry_id IS NOT NULL;

CREATE UNIQUE INDEX idx_checkpoints_task_id_iteration ON checkpoints (task_id, iteration);
CREATE INDEX idx_checkpoints_session_id ON checkpoints (session_id, created_at) WHERE session_id IS NOT NULL;
CREATE INDEX idx_checkpoints_created_at ON checkpoints (created_at);

CREATE INDEX idx_metrics_timestamp ON metrics (timestamp);

-- Three indexes beyond the core 15, each needed by a catalog query:
-- the claim (T2) reads only claimable tasks, however many urgent ones are blocked;
-- the requeue of stale tasks (T7) finds running tasks past their own deadline
-- (last update + their timeout, an expression of the row) without reading the others;
-- one metric over a time range (M2) needs the name before the time.
CREATE INDEX idx_tasks_claimable ON tasks (priority DESC, submitted_at)
    WHERE status = 'pending' AND unmet_dependencies = 0;
CREATE INDEX idx_tasks_running_deadline ON tasks (
    strftime('%Y-%m-%dT%H:%M:%fZ', last_updated_at, '+' || max_execution_timeout_seconds || ' seconds'))
    WHERE status = 'running';
CREATE INDEX idx_metrics_name_timestamp ON metrics (metric_name, timestamp);

CREATE TRIGGER tasks_dependencies_insert AFTER INSERT ON tasks
WHEN NEW.dependencies <> '[]'
BEGIN
    INSERT INTO task_dependencies (depends_on_task_id, task_id)
    SELECT DISTINCT value, NEW.id FROM json_each(NEW.dependencies);
    UPDATE tasks SET unmet_dependencies = (
        SELECT count(*)
        FROM (SELECT DISTINCT value FROM json_each(NEW.dependencies)) AS d
        LEFT JOIN tasks AS p ON p.id = d.value
        WHERE p.status IS NOT 'completed')
    WHERE id = NEW.id;
END;

CREATE TRIGGER tasks_dependencies_frozen BEFORE UPDATE OF dependencies ON tasks
WHEN NEW.dependencies IS NOT OLD.dependencies
BEGIN
    SELECT RAISE(ABORT, 'tasks.dependencies cannot change once the task exists');
END;

CREATE TRIGGER tasks_dependency_completed AFTER UPDATE OF status ON tasks
WHEN NEW.status = 'completed' AND OLD.status <> 'completed'
BEGIN
    UPDATE tasks SET unmet_dependencies = unmet_dependencies - 1
    WHERE id IN (SELECT task_id FROM task_dependencies WHERE depends_on_task_id = NEW.id);
END;

CREATE TRIGGER tasks_dependency_reopened AFTER UPDATE OF status ON tasks
WHEN OLD.status = 'completed' AND NEW.status <> 'completed'
BEGIN
    UPDATE tasks SET unmet_dependencies = unmet_dependencies + 1
    WHERE id IN (SELECT task_id FROM task_dependencies WHERE depends_on_task_id = NEW.id);
END;
