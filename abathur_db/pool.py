"""Connections: one per thread, each configured and checked, all closable at once."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path

from .errors import ConfigurationError, DatabaseFileError, translate

__all__ = ["PRAGMAS", "Pool", "connect", "create_private_file"]

# Applied to, and read back from, every connection. Only journal_mode is stored in
# the file; the others are per connection and off (or different) by default.
PRAGMAS: tuple[tuple[str, object], ...] = (
    ("journal_mode", "wal"),
    ("synchronous", 1),  # NORMAL: durable at checkpoints, safe against corruption in WAL mode
    ("foreign_keys", 1),
    ("busy_timeout", 5000),
    ("wal_autocheckpoint", 1000),
    # A WAL that grew past this (a long reader held back checkpoints) is cut back to
    # it once a checkpoint lets writing restart at its beginning; 4x the ~4 MiB that
    # wal_autocheckpoint leaves in normal use, so normal use never truncates.
    ("journal_size_limit", 16 * 1024 * 1024),
)
BUSY_TIMEOUT_SECONDS = 5.0
_SQLITE_BUSY = 5

# Connections a forked child inherited in the middle of a transaction. Closing one
# would roll back, in the WAL index the processes share, a write the parent is still
# making, so the child keeps them here, unused and open, for the rest of its life.
_INHERITED: list[sqlite3.Connection] = []
_POOLS: "weakref.WeakSet[Pool]" = weakref.WeakSet()

# One lock per database file, shared by the package's connections in this process.
# transaction() takes it before BEGIN IMMEDIATE: threads waiting for SQLite's write
# lock sleep in its busy handler in steps of up to 100 ms and miss the moment it
# frees, while threads queued on this lock wake at once (10 writing threads: write
# p99 185 -> 53 ms). Other processes still wait in SQLite's busy handler.
_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


class _Connection(sqlite3.Connection):
    """A connection opened by the package: it carries its file's in-process write lock."""

    write_lock: threading.Lock | None = None


def _write_lock(path: str) -> threading.Lock:
    key = os.path.realpath(path)
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.Lock())


def _refuse_memory(path: str) -> None:
    if path in ("", ":memory:") or path.startswith("file::memory:") or "mode=memory" in path:
        raise ConfigurationError(
            f"{path!r}: an in-memory database cannot be shared by per-thread connections; "
            "use a file path (a temporary directory in tests)"
        )


def create_private_file(path: str) -> None:
    """Create `path` readable and writable by its owner only, unless it already exists."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise DatabaseFileError(f"{path}: cannot create the database file: {exc.strerror}") from exc


def connect(path: str | os.PathLike, *, readonly: bool = False) -> sqlite3.Connection:
    """Open one connection to `path` with every PRAGMA applied and read back.

    With `readonly`, the file is opened read-only and must exist; journal_mode is
    then read, not changed, and a mismatch is left for the caller to report.
    """
    path = os.fspath(path)
    _refuse_memory(path)
    if readonly:
        target, uri = Path(path).absolute().as_uri() + "?mode=ro", True
    else:
        target, uri = path, False
    try:
        conn = sqlite3.connect(
            target, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
            check_same_thread=False, uri=uri, factory=_Connection,
        )
    except sqlite3.Error as exc:
        raise DatabaseFileError(f"{path}: cannot open: {exc}") from exc
    if not readonly:
        conn.write_lock = _write_lock(path)
    try:
        for name, wanted in PRAGMAS:
            if not (readonly and name == "journal_mode"):
                _set_pragma(conn, name, wanted)
    except BaseException:
        conn.close()
        raise
    return conn


def _set_pragma(conn: sqlite3.Connection, name: str, wanted: object) -> None:
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    pause = 0.001
    while True:
        try:
            current = conn.execute(f"PRAGMA {name}").fetchone()[0]
            if current != wanted:
                # Names and values come from PRAGMAS above: PRAGMA takes no bound parameters.
                conn.execute(f"PRAGMA {name} = {wanted}").fetchall()
                current = conn.execute(f"PRAGMA {name}").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            # Switching a new file to WAL while another process does the same fails
            # with "database is locked" at once, without calling the busy handler.
            if exc.sqlite_errorcode & 0xFF != _SQLITE_BUSY or time.monotonic() > deadline:
                raise translate(exc) from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        except sqlite3.Error as exc:
            raise translate(exc) from exc
    if current != wanted:
        raise ConfigurationError(f"PRAGMA {name} is {current!r} after setting it to {wanted!r}")


class _Slot:
    """Holds one thread's connection; its death (with the thread) closes the connection."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


def _close(registry: dict, key: int, conn: sqlite3.Connection, pid: int) -> None:
    registry.pop(key, None)
    try:
        inherited_mid_transaction = os.getpid() != pid and conn.in_transaction
    except sqlite3.ProgrammingError:  # its user closed it already
        return
    if inherited_mid_transaction:
        _INHERITED.append(conn)
    else:
        conn.close()


class Pool:
    """Per-thread connections to one database file.

    `connection()` returns the calling thread's own connection, opening it on first
    use. A connection is closed when its thread ends, or by `close()`, which closes
    every connection of the pool (call it once the threads using it are done).
    After ``os.fork()`` the child closes its copies of the parent's connections
    (but not one inside a transaction) and opens connections of its own.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        _refuse_memory(self.path)
        create_private_file(self.path)
        self.applied: list[str] = []  # schema files applied when the pool was opened
        self.backup_path: str | None = None  # copy written before the first change, if any
        self._keys = itertools.count()
        self._closed = False
        self._reset()
        _POOLS.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._finalizers: dict[int, weakref.finalize] = {}
        self._pid = os.getpid()

    def connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use."""
        try:
            return self._local.slot.conn
        except AttributeError:
            return self._open_for_this_thread()

    def _open_for_this_thread(self) -> sqlite3.Connection:
        if self._closed:
            raise ConfigurationError(f"{self.path}: the pool is closed")
        conn = connect(self.path)
        slot = _Slot(conn)
        key = next(self._keys)
        with self._lock:
            self._finalizers[key] = weakref.finalize(slot, _close, self._finalizers, key, conn, self._pid)
        self._local.slot = slot
        return conn

    @property
    def open_connections(self) -> int:
        """Return how many connections of this pool are open."""
        return len(self._finalizers)

    def close(self) -> None:
        """Close every connection of the pool, whichever thread opened it."""
        with self._lock:
            self._closed = True
            finalizers = list(self._finalizers.values())
            self._local = threading.local()
        for finalizer in finalizers:
            finalizer()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<abathur_db.Pool {self.path!r} connections={self.open_connections}>"

    def _after_fork_in_child(self) -> None:
        # SQLite's own advice for a forked child (its test/forktest.c): close the
        # inherited connections before opening new ones. While a copy stays open,
        # SQLite in the child believes it already holds the parent's file locks and
        # never takes them for the child's own connections; the parent's last close
        # then deletes the WAL under the child's writes. Closing a copy that is not
        # in a transaction leaves the parent's files alone (the parent's locks stop
        # the last-connection cleanup). Copies belonging to other threads were
        # already closed the same way when Python discarded those threads.
        for finalizer in list(self._finalizers.values()):
            finalizer()
        self._reset()


def _after_fork_in_child() -> None:
    global _WRITE_LOCKS_GUARD
    # Another thread of the parent may have held a lock at the fork; the child's
    # connections, all opened from now on, take fresh ones.
    _WRITE_LOCKS_GUARD = threading.Lock()
    _WRITE_LOCKS.clear()
    for pool in list(_POOLS):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
