"""Sanity-check a database: ``python -m abathur_db.verify [PATH]``.

Creates or upgrades the database at PATH (default: $ABATHUR_DB, else
./abathur.db), then checks its schema, PRAGMAs and integrity. Exit code 0 when
every check passes, 1 when one fails.
"""

from __future__ import annotations

import os
import sqlite3
import sys

import abathur_db
from abathur_db import schema
from abathur_db.errors import AbathurDBError
from abathur_db.maintenance import integrity_check
from abathur_db.pool import PRAGMAS

CORE_INDEXES = (
    "idx_tasks_status_priority", "idx_tasks_session_id", "idx_tasks_submitted_at",
    "idx_tasks_parent_task_id", "idx_agents_task_id", "idx_agents_session_id",
    "idx_agents_spawned_at", "idx_audit_task_id", "idx_audit_timestamp",
    "idx_audit_memory_operation", "idx_audit_memory_entry_id",
    "idx_checkpoints_task_id_iteration", "idx_checkpoints_session_id",
    "idx_checkpoints_created_at", "idx_metrics_timestamp",
)


def main(argv: list[str] | None = None) -> int:
    """Run the checks and print one line per check; return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else os.environ.get("ABATHUR_DB", "abathur.db")
    try:
        with abathur_db.open(path) as pool:
            conn = pool.connection()
            checks = _checks(conn)
    except (AbathurDBError, sqlite3.Error, OSError) as exc:
        print(f"verify: {path}: {exc}", file=sys.stderr)
        return 1
    print(f"abathur_db {abathur_db.__version__}, SQLite {sqlite3.sqlite_version}, database {path}")
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


def _checks(conn: sqlite3.Connection) -> list[tuple[str, bool, str]]:
    files = schema.load_files()
    state = schema.status(conn, files)
    pragmas = {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name, _ in PRAGMAS}
    indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    missing = [name for name in CORE_INDEXES if name not in indexes]
    problems = integrity_check(conn)
    violations = conn.execute("PRAGMA foreign_key_check").fetchall()
    return [
        ("schema", not state.pending and not state.problems,
         f"version {state.user_version}, {len(state.applied)} of {len(files)} files applied"),
        ("pragmas", all(pragmas[name] == value for name, value in PRAGMAS),
         ", ".join(f"{name}={value}" for name, value in pragmas.items())),
        ("core indexes", not missing, "all 15 present" if not missing else "missing " + ", ".join(missing)),
        ("integrity_check", not problems, "ok" if not problems else "; ".join(problems[:5])),
        ("foreign_key_check", not violations, f"{len(violations)} violation(s)"),
    ]


if __name__ == "__main__":
    sys.exit(main())
