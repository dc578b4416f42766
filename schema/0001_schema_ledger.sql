-- The version ledger: one row per schema file applied to this database.
-- The runner reads it to find pending files and to detect edits to applied ones.
CREATE TABLE schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    applied_at TEXT NOT NULL
);
