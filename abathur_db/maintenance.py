"""Copies and checks of a whole database file."""

from __future__ import annotations

import os
import sqlite3
import stat
from typing import NamedTuple

from .errors import ConfigurationError, DatabaseFileError, ValidationError, translate, translated
from .transaction import hold

__all__ = ["CHECKPOINT_MODES", "CHECKPOINT_WAIT_MS", "CheckpointResult", "backup", "checkpoint", "integrity_check"]

CHECKPOINT_MODES = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")
CHECKPOINT_WAIT_MS = 100  # how long checkpoint() waits for a writer or readers


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
    try:
        rows = [message for (message,) in conn.execute(f"PRAGMA {pragma}").fetchall()]
    except sqlite3.Error as exc:
        raise translate(exc) from exc
    return [] if rows == ["ok"] else rows


def checkpoint(conn: sqlite3.Connection, mode: str = "TRUNCATE") -> CheckpointResult:
    """Copy the WAL's committed pages back into the database file; return what was done.

    ``PASSIVE`` copies what it can without waiting. ``FULL`` waits for a writer and
    copies everything; ``RESTART`` also waits for readers, so that the next write
    starts the WAL from its beginning; ``TRUNCATE`` (the default) also cuts the WAL
    file to zero bytes (any case is accepted). Each waits at most CHECKPOINT_WAIT_MS
    (100 ms), never the connection's busy_timeout: while a checkpoint waits for
    readers it holds the write lock, and writers would wait as long. A reader still
    inside a transaction keeps its snapshot's frames in the WAL: the result then has
    ``busy`` 1. SQLite checkpoints on its own (wal_autocheckpoint); call this after
    a long reader has let the WAL grow, or before copying the database file.

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
        conn.execute(f"PRAGMA busy_timeout = {min(busy_timeout, CHECKPOINT_WAIT_MS)}")
        try:
            # The mode is one of the fixed names above: PRAGMA takes no bound parameters.
            return CheckpointResult(*conn.execute(f"PRAGMA wal_checkpoint({name})").fetchone())
        finally:
            conn.execute(f"PRAGMA busy_timeout = {busy_timeout}")


def backup(conn: sqlite3.Connection, dest_path: str | os.PathLike) -> str:
    """Copy the database behind `conn` to `dest_path` with SQLite's online backup API.

    The copy is checked with integrity_check and is never readable by more people
    than the original: owner-only, and no wider than the source file's mode.
    Returns the copy's path.
    """
    dest = os.fspath(dest_path)
    if conn.in_transaction:
        # sqlite3_backup_step cannot read through a connection that is writing.
        raise ConfigurationError("backup() cannot run inside a transaction on the same connection")
    try:
        source = conn.execute("PRAGMA database_list").fetchone()[2]
    except sqlite3.Error as exc:
        raise translate(exc) from exc
    mode = 0o600
    if source:
        mode &= stat.S_IMODE(os.stat(source).st_mode)
    try:
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise ConfigurationError(f"{dest}: backup destination already exists") from None
    except OSError as exc:
        raise DatabaseFileError(f"{dest}: cannot create the backup: {exc.strerror}") from exc
    try:
        target = sqlite3.connect(dest)
        try:
            conn.backup(target)
            problems = integrity_check(target)
        finally:
            target.close()
        if problems:
            raise DatabaseFileError(f"{dest}: the backup copy fails integrity_check: {problems[:3]}")
        os.chmod(dest, mode)
    except sqlite3.Error as exc:
        os.unlink(dest)
        raise translate(exc) from exc
    except BaseException:
        os.unlink(dest)
        raise
    return dest
