"""Copies and checks of a whole database file."""

from __future__ import annotations

import os
import sqlite3
import stat

from .errors import ConfigurationError, DatabaseFileError, translate

__all__ = ["backup", "integrity_check"]


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
