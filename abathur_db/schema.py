"""Versioned schema files: find them, apply the pending ones in order, report status.

Files are named ``NNNN_description.sql`` and applied in version order, each
together with its ledger row in one ``BEGIN IMMEDIATE`` transaction. The ledger
(table ``schema_migrations``, created by file 0001) keeps each file's sha256, so an
edit to an applied file is detected; ``PRAGMA user_version`` mirrors the latest
version.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import _ddl, _rebuild, _values
from .errors import AbathurDBError, BusyError, SchemaError, StorageFullError, translate
from .maintenance import backup, integrity_check, structural_problems
from .pool import PRAGMAS, connect
from .transaction import hold, transaction

__all__ = ["UPGRADE_WAIT_SECONDS", "SchemaFile", "SchemaStatus", "indexes", "load_files", "migrate",
           "schema_dir", "statements", "status"]

log = logging.getLogger("abathur_db")

# How long opening a database waits for another connection's write lock before
# applying pending files itself: long enough for another process to upgrade a
# file of a million tasks (100,000 take under 2 s; see the README).
UPGRADE_WAIT_SECONDS = 600
_BUSY_TIMEOUT_MS = int(dict(PRAGMAS)["busy_timeout"])

_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# The first file is applied to every database and never edited, so its checksum
# tells this package's schema folder from any other.
_LEDGER_FILE = "0001_schema_ledger.sql"
_LEDGER_SHA256 = "b8c56cec95a9f385f5c711ffdbc32b200a0b0ec2a70e766be8b7c659fae9185b"


@dataclass(frozen=True)
class SchemaFile:
    """One schema file: its version, file name, SQL text (LF line ends) and that text's sha256."""

    version: int
    name: str
    sql: str
    sha256: str

    def matches(self, recorded: str) -> bool:
        """Tell whether a ledger's `recorded` sha256 is this file's, with LF or CRLF line ends."""
        # Databases record the hash of the text they were given: LF from a normal
        # checkout, CRLF from one with git's autocrlf before line ends were normalised.
        return recorded in (self.sha256, _sha256(self.sql.replace("\n", "\r\n")))


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
    beside the package folder. A folder counts only when it holds this package's
    own first file, so a script's unrelated ``schema/`` folder is passed over.
    """
    package = Path(__file__).resolve().parent
    tried = []
    for candidate in (package / "sql", package.parent / "schema"):
        ledger = candidate / _LEDGER_FILE
        if not candidate.is_dir():
            tried.append(f"{candidate} (no such folder)")
        elif not ledger.is_file():
            tried.append(f"{candidate} (no {_LEDGER_FILE}: not abathur_db's schema folder)")
        elif _sha256(_read_sql(ledger)) != _LEDGER_SHA256:
            tried.append(f"{candidate} ({_LEDGER_FILE} is not abathur_db's)")
        else:
            return candidate
    raise SchemaError(f"no schema folder of abathur_db: tried {'; '.join(tried)}. Copy the package's schema/ "
                      f"files into {package / 'sql'}, or pass schema_dir= to abathur_db.open()")


def _read_sql(path: Path) -> str:
    # git may check a file out with CRLF line ends: the same file, so the same text and checksum.
    return path.read_bytes().decode("utf-8").replace("\r\n", "\n")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_files(directory: str | os.PathLike[str] | None = None) -> list[SchemaFile]:
    """Return the schema files of `directory` (default: `schema_dir()`) in version order."""
    directory = Path(_values.file_path(directory, "schema_dir")) if directory is not None else schema_dir()
    if not directory.is_dir():
        raise SchemaError(f"{directory}: no such schema folder")
    files = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise SchemaError(f"{path.name}: schema files are named NNNN_description.sql")
        sql = _read_sql(path)
        files.append(SchemaFile(int(match.group(1)), path.name, sql, _sha256(sql)))
    if not files:  # a mistyped schema_dir would otherwise open a database without tables
        raise SchemaError(f"{directory}: holds no schema files (NNNN_description.sql)")
    versions = [f.version for f in files]
    if versions != list(range(1, len(files) + 1)):
        raise SchemaError(f"{directory}: schema versions must run 1, 2, 3… without gaps; found {versions}")
    return files


def indexes(files: list[SchemaFile]) -> dict[str, str]:
    """Return the indexes the schema files create, by name: the CREATE INDEX text SQLite keeps for each.

    The files are applied to an empty in-memory database, so an index a later file
    drops or redefines appears as the last file leaves it.
    """
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for file in files:
            for statement in statements(file.sql):
                conn.execute(statement).fetchall()
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
                                 " ORDER BY tbl_name, name").fetchall())
    finally:
        conn.close()


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
        changed=[f for f in files if f.version in applied and not f.matches(applied[f.version][1])],
        unknown=sorted({v for v in applied if v not in known}
                       | ({user_version} if user_version > newest_file else set())),
    )


def migrate(conn: sqlite3.Connection, db_path: str, files: list[SchemaFile]) -> tuple[list[str], str | None]:
    """Apply the pending schema files to `conn`; return their names and the backup's path.

    All pending files, each with its ledger row, are applied in one write
    transaction: an upgrade is done whole or not at all. Pending files are
    computed once the write lock is held, so two processes opening a new database
    at once apply each file exactly once; one that finds another connection
    writing (upgrading a large file, say) waits for it up to UPGRADE_WAIT_SECONDS.
    Each file runs with what its table rebuilds must keep of the user's (see
    ``_rebuild``); what cannot be kept stops the upgrade before any change. Before
    changing a database that already has tables, a copy is written next to it, or
    a complete copy of the same contents is reused.

    :raises SchemaError: a file cannot be applied, or the database is not Abathur's.
    :raises StorageFullError: the disk filled up; the database was not changed.
    """
    with hold(conn):  # its statements, like the SQL layer's, are waited for by os.fork() and Pool.close()
        return _migrate(conn, db_path, files)


def _migrate(conn: sqlite3.Connection, db_path: str, files: list[SchemaFile]) -> tuple[list[str], str | None]:
    current = status(conn, files)
    if current.problems:
        raise SchemaError(f"{db_path}: " + "; ".join(current.problems))
    if not current.pending:
        return [], None
    started = time.monotonic()
    backup_path = None
    # Table rebuilds need foreign keys off, and the PRAGMA is a no-op inside a
    # transaction. With both off, ALTER TABLE RENAME leaves views, triggers and
    # foreign keys that name the table as they were written (SQLite's ALTER TABLE
    # compatibility note), so the user's keep naming the rebuilt table.
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("PRAGMA legacy_alter_table = ON")
    try:
        with _write_transaction(conn, db_path):
            current = status(conn, files)
            if current.problems:
                raise SchemaError(f"{db_path}: " + "; ".join(current.problems))
            pending = [(file, list(statements(file.sql))) for file in current.pending]
            if not pending:
                return [], None
            log.info("%s: upgrading from schema version %d: %s pending", db_path,
                     current.user_version, ", ".join(file.name for file, _ in pending))
            has_tables = _refuse_foreign(conn, db_path, current)
            problems, owned = _rebuild.preflight(conn, [file_statements for _, file_statements in pending])
            _refuse_losses(db_path, problems)
            if has_tables:
                backup_path = _backup(db_path, current.user_version)
            for (file, file_statements), package_tables in zip(pending, owned):
                plan = _rebuild.plan(conn, file_statements, package_tables)
                _refuse_losses(db_path, plan.problems)
                if plan.tables:
                    log.info("%s: %s %s", db_path, file.name, plan.summary())
                _apply(conn, db_path, file, plan)
    finally:
        conn.execute("PRAGMA ignore_check_constraints = OFF")
        conn.execute("PRAGMA legacy_alter_table = OFF")
        conn.execute("PRAGMA foreign_keys = ON")
        if conn.execute("PRAGMA foreign_keys").fetchone()[0] != 1:  # pragma: no cover - defensive
            raise SchemaError(f"{db_path}: foreign keys could not be switched back on")
    log.info("%s: at schema version %d after %.1f s", db_path, files[-1].version,
             time.monotonic() - started)
    return [file.name for file, _ in pending], backup_path


def _refuse_losses(db_path: str, problems: list[str]) -> None:
    if problems:
        raise SchemaError(f"{db_path}: the upgrade would lose what it does not own, so nothing was changed: "
                          + "; ".join(problems))


@contextlib.contextmanager
def _write_transaction(conn: sqlite3.Connection, db_path: str) -> Iterator[None]:
    """Run the block in a write transaction; wait up to UPGRADE_WAIT_SECONDS for another writer."""
    with contextlib.ExitStack() as stack:
        try:
            stack.push(_entered(conn, 0))
        except BusyError:
            log.info("%s: another connection is writing (upgrading the schema?); waiting up to %s s",
                     db_path, UPGRADE_WAIT_SECONDS)
            try:
                stack.push(_entered(conn, UPGRADE_WAIT_SECONDS * 1000))
            except BusyError as exc:
                raise BusyError(f"{db_path}: another connection held the write lock for over "
                                f"{UPGRADE_WAIT_SECONDS} s while this one waited to upgrade the schema") from exc
        yield


def _entered(conn: sqlite3.Connection, wait_ms: float) -> transaction:
    """Return a write transaction entered on `conn`, having waited up to `wait_ms` for the write lock."""
    # busy_timeout also bounds transaction()'s wait for this process's own write lock.
    _set_busy_timeout(conn, wait_ms)
    try:
        block = transaction(conn)
        block.__enter__()
        return block
    finally:
        _set_busy_timeout(conn, _BUSY_TIMEOUT_MS)


def _set_busy_timeout(conn: sqlite3.Connection, milliseconds: float) -> None:
    # An integer of our own: PRAGMA takes no bound parameters.
    conn.execute(f"PRAGMA busy_timeout = {int(milliseconds)}")


def _user_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!' "
        "AND name <> 'schema_migrations' ORDER BY name"
    ).fetchall()
    return [name for (name,) in rows]


def _refuse_foreign(conn: sqlite3.Connection, db_path: str, current: SchemaStatus) -> bool:
    """Refuse a database that is not Abathur's; return whether it has tables (and so needs a backup)."""
    tables = _user_tables(conn)
    if tables and not current.applied and "tasks" not in tables:
        raise SchemaError(
            f"{db_path}: not an Abathur database (no schema ledger and no tasks table; "
            f"it holds {', '.join(tables)})"
        )
    return bool(tables)


def _backup(db_path: str, version: int) -> str:
    """Return the path of a complete copy of the database, reusing one of the same contents if there is one."""
    # Our own connection holds the write lock; a second one still reads the last
    # committed state, which is exactly what the upgrade is about to change.
    reader = connect(db_path, readonly=True)
    try:
        for candidate in sorted(glob.glob(glob.escape(db_path) + f".v{version}-*.bak"), reverse=True):
            if _holds_the_same(reader, candidate):
                log.info("%s: reusing the complete backup %s", db_path, candidate)
                return candidate
        # Only this process writes these (it holds the write lock): any left are a killed backup's.
        for partial in glob.glob(glob.escape(db_path) + ".v*-*.bak.*.partial*"):
            with contextlib.suppress(OSError):
                os.unlink(partial)
        stamp = _values.now().replace("-", "").replace(":", "").replace(".", "")
        destination = f"{db_path}.v{version}-{stamp}.bak"
        backup(reader, destination)  # logs the copy it wrote
    finally:
        reader.close()
    return destination


def _holds_the_same(source: sqlite3.Connection, path: str) -> bool:
    """Tell whether the backup at `path` is sound and holds the same schema, row counts and highest rowids."""
    try:
        # immutable: the copy is read as a plain file, and no -wal or -shm is created beside it.
        copy = sqlite3.connect(Path(path).absolute().as_uri() + "?immutable=1", uri=True)
    except sqlite3.Error:  # pragma: no cover - a path the glob just found
        return False
    try:
        sound = not structural_problems(integrity_check(copy, quick=True))
        return sound and _contents(copy) == _contents(source)
    except (sqlite3.Error, AbathurDBError):
        return False
    finally:
        copy.close()


def _contents(conn: sqlite3.Connection) -> tuple[int, list[Any], list[Any]]:
    """Return the schema version, the schema, and every table's row count and highest rowid."""
    schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    rows = []
    for kind, name, _, sql in schema:
        if kind == "table" and not sql.upper().startswith("CREATE VIRTUAL"):
            # Names come from the file's own schema.
            rowid = "NULL" if _ddl.without_rowid(sql) else "max(rowid)"
            rows.append(conn.execute(f"SELECT count(*), {rowid} FROM {_ddl.quote(name)}").fetchone())
    return conn.execute("PRAGMA user_version").fetchone()[0], schema, rows


def _apply(conn: sqlite3.Connection, db_path: str, file: SchemaFile, plan: _rebuild.Plan) -> None:
    ledger: tuple[_rebuild.Step, ...] = (
        ("INSERT INTO schema_migrations (version, name, sha256, applied_at) VALUES (?, ?, ?, ?)",
         (file.version, file.name, file.sha256, _values.now())),
        # user_version is an integer from our own file name; PRAGMA takes no parameters.
        (f"PRAGMA user_version = {int(file.version)}", ()),
    )
    started = time.monotonic()
    for sql, params in (*plan.script, *ledger):
        try:
            conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            code = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
            if isinstance(translate(exc), StorageFullError):
                raise StorageFullError(f"{db_path}: the disk is full: the upgrade stopped in {file.name} and the "
                                       f"database was not changed (at {code[0]!r}: {exc})") from exc
            raise SchemaError(f"{db_path}: {file.name} failed at {code[0]!r}: {exc}") from exc
    log.info("%s: ran %s in %.1f s", db_path, file.name, time.monotonic() - started)
