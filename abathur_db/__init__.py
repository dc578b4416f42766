"""abathur_db: the SQLite persistence layer of Abathur (sessions, task queue, agents, audit, ...).

Open a database with ``abathur_db.open(path)``; each thread then takes its own
connection from ``pool.connection()`` and passes it to the table modules'
functions, e.g. ``abathur_db.tasks.claim_next(conn)``. Rows come back as plain
dicts, typed by the TypedDicts of ``abathur_db.rows`` (``TaskRow``, ...).
"""

from __future__ import annotations

import logging
import os
import sqlite3

if sqlite3.sqlite_version_info < (3, 35, 0):
    raise ImportError(
        f"abathur_db needs SQLite 3.35 or newer (for RETURNING); this Python has {sqlite3.sqlite_version}"
    )

from . import agents, audit, checkpoints, metrics, schema, sessions, state, tasks  # noqa: E402
from .errors import (  # noqa: E402
    AbathurDBError,
    BusyError,
    ConfigurationError,
    ConstraintError,
    DatabaseFileError,
    ForeignKeyError,
    LeaseLostError,
    NotFoundError,
    SchemaError,
    StorageFullError,
    StoredValueError,
    TransitionError,
    UniqueError,
    ValidationError,
)
from .maintenance import backup, checkpoint, integrity_check  # noqa: E402
from .pool import Pool, StrOrBytesPath, connect  # noqa: E402
from .rows import (AgentRow, AuditRow, CheckpointRow, MetricRow, SessionRow, StateRow, TaskCounts,  # noqa: E402
                   TaskRow, TaskWithSessionRow)
from .transaction import transaction  # noqa: E402
from .validation import PlanCheck, check_catalog, check_plan, explain_query_plan, validate_foreign_keys  # noqa: E402

__version__ = "0.1.0"

# A library leaves logging to its application: without a handler configured there,
# the package's INFO lines go nowhere (not to Python's last-resort stderr handler).
logging.getLogger("abathur_db").addHandler(logging.NullHandler())

__all__ = [
    "AbathurDBError",
    "AgentRow",
    "AuditRow",
    "BusyError",
    "CheckpointRow",
    "ConfigurationError",
    "ConstraintError",
    "DatabaseFileError",
    "ForeignKeyError",
    "LeaseLostError",
    "MetricRow",
    "NotFoundError",
    "PlanCheck",
    "Pool",
    "SchemaError",
    "SessionRow",
    "StateRow",
    "StorageFullError",
    "StoredValueError",
    "TaskCounts",
    "TaskRow",
    "TaskWithSessionRow",
    "TransitionError",
    "UniqueError",
    "ValidationError",
    "__version__",
    "agents",
    "audit",
    "backup",
    "check_catalog",
    "check_plan",
    "checkpoint",
    "checkpoints",
    "connect",
    "explain_query_plan",
    "integrity_check",
    "metrics",
    "open",
    "sessions",
    "state",
    "tasks",
    "transaction",
    "validate_foreign_keys",
]


def open(path: StrOrBytesPath, *, schema_dir: str | os.PathLike[str] | None = None,  # noqa: A001
         allow_rollback_journal: bool = False) -> Pool:
    """Open the database at `path`, creating or upgrading it; return its connection pool.

    Pending schema files (from `schema_dir`, default: the package's own) are applied
    first. If that changes a database that already had tables, a backup copy is
    written next to it first; its path is ``pool.backup_path``. Where the file system
    cannot hold a WAL, `allow_rollback_journal` accepts SQLite's rollback journal.
    """
    files = schema.load_files(schema_dir)
    pool = Pool(path, allow_rollback_journal=allow_rollback_journal)
    try:
        pool.applied, pool.backup_path = schema.migrate(pool.connection(), pool.path, files)
    except BaseException:
        pool.close()
        raise
    return pool
