"""Copies and checks of a whole database file."""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
import stat
import tempfile
import time
from typing import NamedTuple

from . import _values
from .errors import (
    AbathurDBError,
    ConfigurationError,
    DatabaseFileError,
    StorageFullError,
    ValidationError,
    translate,
    translated,
)
from .transaction import hold, rows

__all__ = ["CHECKPOINT_MODES", "CHECKPOINT_WAIT_MS", "CheckpointResult", "backup", "checkpoint",
           "integrity_check", "structural_problems"]

CHECKPOINT_MODES = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")
CHECKPOINT_WAIT_MS = 100  # how long checkpoint() waits for a writer or readers

log = logging.getLogger("abathur_db")


class CheckpointResult(NamedTuple):
    """What ``PRAGMA wal_checkpoint`` reports."""

    busy: int  # 1 when another connection kept the checkpoint from finishing, else 0
    log: int  # frames in the WAL (-1 when the database is not in WAL mode)
    checkpointed: int  # frames copied back into the database file (-1 likewise)


def integrity_check(conn: sqlite3.Connection, *, quick: bool = False) -> list[str]:
    """Return the problems `PRAGMA integrity_check` finds (an empty list when the file is sound).

    `quick` runs ``quick_check``, which skips the index-versus-table comparison.
    """
    pragma = "quick_check" if quick else "integrity_check"
    messages = [message for (message,) in rows(conn, None, f"PRAGMA {pragma}")]
    return [] if messages == ["ok"] else messages


def checkpoint(conn: sqlite3.Connection, mode: str = "TRUNCATE") -> CheckpointResult:
    """Copy the WAL's committed pages back into the database file; return what was done.

    ``PASSIVE`` copies what it can without waiting. ``FULL`` waits for a writer and
    copies everything; ``RESTART`` also waits for readers, so that the next write
    starts the WAL from its beginning; ``TRUNCATE`` (the default) also cuts the WAL
    file to zero bytes (any case is accepted). Each waits at most CHECKPOINT_WAIT_MS
    (100 ms), never the connection's busy_timeout: while a checkpoint waits for
    readers it holds the write lock, and writers would wait as long. A reader still
    inside a transaction keeps its snapshot's frames in the WAL: the result then has
    ``busy`` 1. Another checkpoint under way is waited for within the same time.
    SQLite checkpoints on its own (wal_autocheckpoint), and so does a thread of the
    package's beside the writers (see _checkpointer); call this after a long reader
    has let the WAL grow, or before copying the database file.

    :raises ConfigurationError: when `conn` itself is inside a transaction.
    """
    name = mode.upper() if isinstance(mode, str) else mode
    if name not in CHECKPOINT_MODES:
        raise ValidationError(f"checkpoint: mode {mode!r} is not one of {', '.join(CHECKPOINT_MODES)}")
    with hold(conn), translated("checkpoint"):
        if conn.in_transaction:
            # SQLite refuses with SQLITE_LOCKED, which would read as another connection's lock.
            raise ConfigurationError("checkpoint() cannot run inside a transaction on the same connection")
        busy_timeout = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        wait_ms = min(busy_timeout, CHECKPOINT_WAIT_MS)
        deadline = time.monotonic() + wait_ms / 1000
        conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
        try:
            while True:
                # The mode is one of the fixed names above: PRAGMA takes no bound parameters.
                result = CheckpointResult(*conn.execute(f"PRAGMA wal_checkpoint({name})").fetchone())
                # (1, -1, -1): another checkpoint was under way (SQLite's own at a commit, or the
                # package's in the background), and SQLite does not wait for one.
                if result != (1, -1, -1) or time.monotonic() >= deadline:
                    return result
                time.sleep(0.001)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {busy_timeout}")


def backup(conn: sqlite3.Connection, dest_path: str | os.PathLike[str]) -> str:
    """Copy the database behind `conn` to `dest_path` with SQLite's online backup API.

    The copy is written under a temporary name beside `dest_path` (``<dest>.<random>.partial``)
    and given its name only once complete and checked, so an interrupted backup
    never leaves a file that looks like one. The check: ``integrity_check`` finds
    the copy structurally sound, and every value in it that breaks a CHECK or NOT
    NULL rule is one the source holds too (a database whose only problems are such
    legacy rows backs up fine). The copy is never readable by more people than the
    original: owner-only, and no wider than the source file's mode. Returns the copy's path.

    :raises ConfigurationError: `dest_path` exists, or `conn` is inside a transaction.
    :raises StorageFullError: the disk is full; nothing is left behind.
    """
    dest = _values.file_path(dest_path, "a backup's path")
    # hold: another thread's connection is refused, and pool.close() waits for the copy.
    # translated: even reading conn.in_transaction raises sqlite3's error once conn is closed.
    with hold(conn), translated():
        return _backup(conn, dest)


def _backup(conn: sqlite3.Connection, dest: str) -> str:
    started = time.monotonic()
    if conn.in_transaction:
        # sqlite3_backup_step cannot read through a connection that is writing.
        raise ConfigurationError("backup() cannot run inside a transaction on the same connection")
    source = conn.execute("PRAGMA database_list").fetchone()[2]
    mode = 0o600
    if source:
        mode &= stat.S_IMODE(os.stat(source).st_mode)
    if os.path.lexists(dest):
        raise ConfigurationError(f"{dest}: backup destination already exists")
    folder, base = os.path.split(os.path.abspath(dest))
    try:
        handle, partial = tempfile.mkstemp(prefix=base + ".", suffix=".partial", dir=folder)  # mode 0o600
        os.close(handle)
    except OSError as exc:
        raise _file_error(dest, "cannot create the backup", exc) from exc
    try:
        _copy_and_check(conn, partial, dest)
        os.chmod(partial, mode)
        try:
            os.link(partial, dest)  # unlike rename, never replaces a file that appeared meanwhile
        except FileExistsError:
            raise ConfigurationError(f"{dest}: backup destination already exists") from None
        except OSError as exc:
            raise _file_error(dest, "cannot name the finished backup", exc) from exc
        _sync_folder(folder)
    finally:
        os.unlink(partial)
    log.info("%s: backup written to %s (%d bytes in %.1f s)", source or "a temporary database", dest,
             os.path.getsize(dest), time.monotonic() - started)
    return dest


# How integrity_check words a row that breaks a rule of its table.
_ROW_RULE = re.compile(r"(CHECK constraint failed in \S+|NULL value in \S+)$")


def structural_problems(problems: list[str]) -> list[str]:
    """Return the `integrity_check` problems that are not rows breaking a CHECK or NOT NULL rule."""
    return [problem for problem in problems if not _ROW_RULE.match(problem)]


def _copy_and_check(conn: sqlite3.Connection, partial: str, dest: str) -> None:
    """Copy the database into `partial`; refuse a copy that is unsound or breaks a rule the source keeps."""
    # validation imports schema, which imports this module.
    from .validation import rule_violations

    try:
        target = _open_copy(partial)
        try:
            conn.backup(target)
            problems = integrity_check(target)
            broken = structural_problems(problems)
            if problems and not broken:
                # integrity_check only names tables, and a read-only connection skips
                # CHECK constraints altogether: compare the rows themselves.
                kept = {tuple(row.items()) for row in rule_violations(conn)}
                broken = [f"{row['table']} {row['row_key']} {row['row']!r}: {row['column']} breaks {row['rule']}"
                          for row in rule_violations(target) if tuple(row.items()) not in kept]
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise translate(exc) from exc
    if broken:
        raise DatabaseFileError(f"{dest}: the backup copy fails integrity_check: {broken[:3]}")


def _open_copy(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path)


def _file_error(dest: str, what: str, exc: OSError) -> AbathurDBError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"{dest}: {what}: the disk is full ({exc.strerror})")
    return DatabaseFileError(f"{dest}: {what}: {exc.strerror}")


def _sync_folder(folder: str) -> None:
    """Make the backup's new name durable (a crash could otherwise forget it)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
