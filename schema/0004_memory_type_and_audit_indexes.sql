-- Three details aligned with Abathur's own design:
-- memory_entries.memory_type is one of semantic, episodic, procedural;
-- a memory entry's audit rows come newest first straight from their index (U4);
-- deleting an agent finds its audit rows by index, not by reading the whole trail.
--
-- memory_entries is rebuilt to add its CHECK (SQLite cannot add one in place).
-- As in 0003, rows that break the new rule are copied as they are and reported
-- by verify, and the runner keeps what the user added to the table.

PRAGMA ignore_check_constraints = ON;

ALTER TABLE memory_entries RENAME TO legacy_memory_entries;

CREATE TABLE memory_entries (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL
        CONSTRAINT value CHECK (json_valid(value)),
    memory_type TEXT NOT NULL
        CONSTRAINT memory_type CHECK (memory_type IN ('semantic', 'episodic', 'procedural')),
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

INSERT INTO memory_entries (
    id, namespace, key, value, memory_type, version, is_deleted, metadata,
    created_by, updated_by, created_at, updated_at)
SELECT
    id, namespace, key, value, memory_type, version, is_deleted, metadata,
    created_by, updated_by, created_at, updated_at
FROM legacy_memory_entries;

DROP TABLE legacy_memory_entries;

PRAGMA ignore_check_constraints = OFF;

-- U4 reads one entry's rows newest first: (memory_entry_id, timestamp) serves its
-- ORDER BY timestamp DESC, id DESC without a sort, as idx_audit_task_id does for U1.
DROP INDEX idx_audit_memory_entry_id;
CREATE INDEX idx_audit_memory_entry_id ON audit (memory_entry_id, timestamp) WHERE memory_entry_id IS NOT NULL;

-- Deleting an agent makes SQLite look for audit rows that still refer to it; an
-- equality on agent_id uses this partial index, and rows without an agent cost no write.
CREATE INDEX idx_audit_agent_id ON audit (agent_id) WHERE agent_id IS NOT NULL;
