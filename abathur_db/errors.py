"""The package's exceptions, and the one place that turns sqlite3 errors into them."""

from __future__ import annotations

import math
import re
import sqlite3
from types import TracebackType
from typing import Any

__all__ = [
    "AbathurDBError",
    "BusyError",
    "ConfigurationError",
    "ConstraintError",
    "DatabaseFileError",
    "ForeignKeyError",
    "LeaseLostError",
    "NotFoundError",
    "SchemaError",
    "StorageFullError",
    "StoredValueError",
    "TransitionError",
    "UniqueError",
    "ValidationError",
    "short_repr",
    "translate",
    "translated",
]


class AbathurDBError(Exception):
    """Base class of every error abathur_db raises."""


class NotFoundError(AbathurDBError, LookupError):
    """A row looked up by its key does not exist."""


class ConstraintError(AbathurDBError):
    """A write broke one of the database's rules."""


class ForeignKeyError(ConstraintError):
    """A write referred to a row that does not exist."""


class UniqueError(ConstraintError):
    """A write repeated a key or a unique combination of values."""


class ValidationError(ConstraintError, ValueError):
    """A value has the wrong type, is out of range or breaks a CHECK or NOT NULL rule."""


class TransitionError(AbathurDBError):
    """A status change is not allowed from the row's current status."""


class LeaseLostError(TransitionError):
    """A worker's call carried a lease that is not the task's current one: the task moved on without it."""


class SchemaError(AbathurDBError):
    """The schema files and the database disagree, or a file cannot be applied."""


class StorageFullError(AbathurDBError):
    """The disk, or the database's page limit, is full."""


class BusyError(AbathurDBError):
    """Another connection held the write lock for longer than busy_timeout."""


class DatabaseFileError(AbathurDBError):
    """The file cannot be opened as an SQLite database (missing, unreadable, corrupt, not SQLite)."""


class ConfigurationError(AbathurDBError):
    """The database or connection cannot be used so (closed pool, another thread's connection, :memory:, ...)."""


class StoredValueError(AbathurDBError, ValueError):
    """A stored value breaks the current rules (text that is not JSON, an unknown state), e.g. one an upgrade kept."""


# Extended result codes (https://sqlite.org/rescode.html); the primary code is the low byte.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_CONSTRAINT = 19
_SQLITE_NOTADB = 26
_IOERR_SHMSIZE = 4874  # the -shm file could not grow: a full disk (or file size limit)
_CONSTRAINT_CHECK = 275
_CONSTRAINT_FOREIGNKEY = 787
_CONSTRAINT_NOTNULL = 1299
_CONSTRAINT_PRIMARYKEY = 1555
_CONSTRAINT_UNIQUE = 2067

# "UNIQUE constraint failed: tasks.id" / "NOT NULL constraint failed: tasks.prompt"
# / "CHECK constraint failed: priority" (our CHECK constraints are named after their column).
_FAILED = re.compile(r"constraint failed: (.+)$")


def translate(
    exc: sqlite3.Error,
    table: str | None = None,
    params: dict[str, Any] | tuple[Any, ...] | None = None,
    conn: sqlite3.Connection | None = None,
) -> AbathurDBError:
    """Return the package error for an sqlite3 error raised while writing `table`.

    `params` (the statement's parameters) lets the message quote the offending
    value, when they are named; `conn` lets a foreign-key failure name the
    missing parent. The caller raises the result ``from exc``.
    """
    code = getattr(exc, "sqlite_errorcode", None) or 0
    primary = code & 0xFF
    where = f"{table}: " if table else ""
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
        return ConfigurationError(f"{where}the connection is closed (pool.close() closes them all): {exc}")
    # Positional parameters carry no column names to match SQLite's message with.
    params = params if isinstance(params, dict) else {}
    if code == _CONSTRAINT_FOREIGNKEY:
        return ForeignKeyError(where + _foreign_key_detail(conn, table, params))
    if primary == _SQLITE_CONSTRAINT:
        match = _FAILED.search(str(exc))
        names = [n.strip() for n in match.group(1).split(",")] if match else []
        fields = [n.split(".", 1)[-1] for n in names]
        shown = ", ".join(f"{table or '?'}.{f} = {short_repr(params[f])}" if f in params else f"{table or '?'}.{f}"
                          for f in fields) or str(exc)
        if code in (_CONSTRAINT_UNIQUE, _CONSTRAINT_PRIMARYKEY):
            return UniqueError(f"{where}duplicate {shown} (UNIQUE constraint)")
        if code == _CONSTRAINT_NOTNULL:
            return ValidationError(f"{where}{shown} is required (NOT NULL constraint)")
        if code == _CONSTRAINT_CHECK:
            return ValidationError(f"{where}{shown} is not allowed (CHECK constraint {', '.join(names)})")
        return ValidationError(f"{where}{exc}")
    if primary == _SQLITE_FULL or code == _IOERR_SHMSIZE:
        return StorageFullError(f"{where}database or disk is full: {exc}")
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return BusyError(f"{where}database stayed locked past busy_timeout: {exc}")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_CANTOPEN, _SQLITE_READONLY):
        return DatabaseFileError(f"{where}{exc}")
    return AbathurDBError(f"{where}{exc}")


def translated(table: str | None = None, params: dict[str, Any] | None = None,
               conn: sqlite3.Connection | None = None) -> "_Translated":
    """Return a context manager that raises the package's error for any sqlite3 error in its block.

    ``with translated("tasks", params, conn):`` stands for ``try: ... except
    sqlite3.Error as exc: raise translate(exc, "tasks", params, conn) from exc``.
    """
    return _Translated(table, params, conn)


class _Translated:
    __slots__ = ("_table", "_params", "_conn")

    def __init__(self, table: str | None, params: dict[str, Any] | None, conn: sqlite3.Connection | None) -> None:
        self._table, self._params, self._conn = table, params, conn

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, sqlite3.Error):
            raise translate(exc, self._table, self._params, self._conn) from exc


def short_repr(value: object, limit: int = 80) -> str:
    """Return repr(value), shortened so that a 1 MB string does not flood a message."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"
    except ValueError:  # an int past sys.get_int_max_str_digits(), or holding one
        if isinstance(value, int):
            return f"<an int of about {int(value.bit_length() * math.log10(2)) + 1} digits>"
        return f"<a {type(value).__name__} holding an int too long to show>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _foreign_key_detail(conn: sqlite3.Connection | None, table: str | None, params: dict[str, Any]) -> str:
    """Name the first reference in `params` whose parent row is missing."""
    if conn is not None and table:
        # Table and column names come from SQLite's own schema, never from the caller.
        for row in conn.execute(f"PRAGMA foreign_key_list({table})").fetchall():
            parent, column, parent_column = row[2], row[3], row[4] or "rowid"
            value = params.get(column)
            if value is None:
                continue
            found = conn.execute(
                f"SELECT 1 FROM {parent} WHERE {parent_column} = ?", (value,)
            ).fetchone()
            if found is None:
                return f"{table}.{column} = {short_repr(value)}: no {parent} row has that {parent_column}"
    return "a referenced row does not exist (FOREIGN KEY constraint)"
