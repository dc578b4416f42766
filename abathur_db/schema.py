"""Versioned schema files: find them, apply the pending ones in order, report status.

Files are named ``NNNN_description.sql`` and applied in version order, each
together with its ledger row in one ``BEGIN IMMEDIATE`` transaction. The ledger
(table ``schema_migrations``, created by file 0001) keeps each file's sha256, so an
edit to an applied file is detected; ``PRAGMA user_version`` mirrors the latest
version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import _values
from .errors import SchemaError
from .maintenance import backup
from .pool import connect
from .transaction import transaction

__all__ = ["SchemaFile", "SchemaStatus", "load_files", "migrate", "schema_dir", "statements", "status"]

log = logging.getLogger("abathur_db")

_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class SchemaFile:
    """One schema file: its version, file name, SQL text and the text's sha256."""

    version: int
    name: str
    sql: str
    sha256: str


@dataclass
class SchemaStatus:
    """How a database's applied schema compares with the schema files."""

    user_version: int
    applied: dict[int, tuple[str, str, str]]  # version -> (name, sha256, applied_at)
    pending: list[SchemaFile] = field(default_factory=list)
    changed: list[SchemaFile] = field(default_factory=list)  # applied, but the file's text differs
    unknown: list[int] = field(default_factory=list)  # versions newer than any file

    @property
    def problems(self) -> list[str]:
        """Return why the database cannot be used with these files (empty when it can)."""
        found = []
        for file in self.changed:
            recorded = self.applied[file.version][1]
            found.append(
                f"schema file {file.name} changed after it was applied "
                f"(ledger sha256 {recorded[:12]}…, file {file.sha256[:12]}…)"
            )
        if self.unknown:
            found.append(
                f"database schema version {max(self.unknown)} is newer than this abathur_db "
                "knows; upgrade abathur_db"
            )
        return found


def schema_dir() -> Path:
    """Return the folder holding the schema files.

    An installed package carries them in ``abathur_db/sql``; a checkout, or the
    package folder copied next to a script together with ``schema/``, has them
    beside the package folder.
    """
    package = Path(__file__).resolve().parent
    candidates = (package / "sql", package.parent / "schema")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise SchemaError(f"no schema folder: looked in {' and '.join(map(str, candidates))}")


def load_files(directory: str | os.PathLike | None = None) -> list[SchemaFile]:
    """Return the schema files of `directory` (default: `schema_dir()`) in version order."""
    directory = Path(directory) if directory is not None else schema_dir()
    files = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise SchemaError(f"{path.name}: schema files are named NNNN_description.sql")
        data = path.read_bytes()
        files.append(SchemaFile(int(match.group(1)), path.name, data.decode("utf-8"),
                                hashlib.sha256(data).hexdigest()))
    versions = [f.version for f in files]
    if versions != list(range(1, len(files) + 1)):
        raise SchemaError(f"{directory}: schema versions must run 1, 2, 3… without gaps; found {versions}")
    return files


def statements(sql: str) -> Iterator[str]:
    """Yield the statements of `sql` one by one.

    ``executescript()`` would commit any open transaction first, so a file is run
    statement by statement; ``sqlite3.complete_statement`` keeps trigger bodies,
    strings and comments that contain ';' in one piece.
    """
    pending = ""
    pieces = sql.split(";")
    for piece in pieces[:-1]:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    pending += pieces[-1]
    if pending.strip():
        yield pending.strip()


def status(conn: sqlite3.Connection, files: list[SchemaFile]) -> SchemaStatus:
    """Compare the database's ledger and user_version with `files`."""
    user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    has_ledger = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    applied = {}
    if has_ledger:
        rows = conn.execute("SELECT version, name, sha256, applied_at FROM schema_migrations").fetchall()
        applied = {version: (name, sha, at) for version, name, sha, at in rows}
    known = {f.version for f in files}
    newest_file = max(known, default=0)
    return SchemaStatus(
        user_version=user_version,
        applied=applied,
        pending=[f for f in files if f.version not in applied],
        changed=[f for f in files if f.version in applied and applied[f.version][1] != f.sha256],
        unknown=sorted({v for v in applied if v not in known}
                       | ({user_version} if user_version > newest_file else set())),
    )


def migrate(conn: sqlite3.Connection, db_path: str, files: list[SchemaFile]) -> tuple[list[str], str | None]:
    """Apply the pending schema files to `conn`; return their names and the backup's path.

    Pending files are computed again once the write lock is held, so two processes
    opening a new database at once apply each file exactly once. Before the first
    change to a database that already has tables, a copy is written next to it.
    """
    current = status(conn, files)
    if current.problems:
        raise SchemaError(f"{db_path}: " + "; ".join(current.problems))
    if not current.pending:
        return [], None
    applied: list[str] = []
    backup_path = None
    # Table rebuilds need foreign keys off, and the PRAGMA is a no-op inside a transaction.
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        while True:
            with transaction(conn):
                current = status(conn, files)
                if current.problems:
                    raise SchemaError(f"{db_path}: " + "; ".join(current.problems))
                if not current.pending:
                    break
                file = current.pending[0]
                if not applied:
                    backup_path = _prepare_first_change(conn, db_path, current)
                _apply(conn, db_path, file)
            applied.append(file.name)
    finally:
        conn.execute("PRAGMA ignore_check_constraints = OFF")
        conn.execute("PRAGMA foreign_keys = ON")
        if conn.execute("PRAGMA foreign_keys").fetchone()[0] != 1:  # pragma: no cover - defensive
            raise SchemaError(f"{db_path}: foreign keys could not be switched back on")
    return applied, backup_path


def _user_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!' "
        "AND name <> 'schema_migrations' ORDER BY name"
    ).fetchall()
    return [name for (name,) in rows]


def _prepare_first_change(conn: sqlite3.Connection, db_path: str, current: SchemaStatus) -> str | None:
    """Refuse a database that is not Abathur's; back up one that already has tables."""
    tables = _user_tables(conn)
    if not tables:
        return None
    if not current.applied and "tasks" not in tables:
        raise SchemaError(
            f"{db_path}: not an Abathur database (no schema ledger and no tasks table; "
            f"it holds {', '.join(tables)})"
        )
    stamp = _values.now().replace("-", "").replace(":", "").replace(".", "")
    destination = f"{db_path}.v{current.user_version}-{stamp}.bak"
    # Our own connection holds the write lock; a second one still reads the last
    # committed state, which is exactly what the upgrade is about to change.
    reader = connect(db_path, readonly=True)
    try:
        backup(reader, destination)
    finally:
        reader.close()
    log.warning("abathur_db: copied %s to %s before upgrading its schema", db_path, destination)
    return destination


def _apply(conn: sqlite3.Connection, db_path: str, file: SchemaFile) -> None:
    for statement in statements(file.sql):
        try:
            conn.execute(statement).fetchall()
        except sqlite3.Error as exc:
            code = [line for line in statement.splitlines() if not line.lstrip().startswith("--")]
            raise SchemaError(f"{db_path}: {file.name} failed at {code[0]!r}: {exc}") from exc
    conn.execute(
        "INSERT INTO schema_migrations (version, name, sha256, applied_at) VALUES (?, ?, ?, ?)",
        (file.version, file.name, file.sha256, _values.now()),
    )
    # user_version is an integer from our own file name; PRAGMA takes no parameters.
    conn.execute(f"PRAGMA user_version = {int(file.version)}")
