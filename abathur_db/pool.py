"""Connections: one per thread, each configured and checked, owned by its thread, all closable at once."""

from __future__ import annotations

import collections
import itertools
import math
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any, cast

from . import _values
from ._checkpointer import Checkpointer
from ._turn import Turn
from .errors import ConfigurationError, DatabaseFileError, translate

# What a database path may be: bytes are decoded as the file system does.
StrOrBytesPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]

__all__ = ["PRAGMAS", "Pool", "connect", "create_private_file"]

# Applied to, and read back from, every connection. Only journal_mode is stored in
# the file; the others are per connection and off (or different) by default.
PRAGMAS: tuple[tuple[str, int | str], ...] = (
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
# With allow_rollback_journal, on a file system where WAL is impossible: the rollback
# journal, and synchronous=FULL, which that journal needs to survive a power cut.
ROLLBACK_JOURNAL_PRAGMAS: dict[str, int | str] = {"journal_mode": "delete", "synchronous": 2}
BUSY_TIMEOUT_SECONDS = 5.0
_SQLITE_BUSY = 5

# Connections a forked child inherited in the middle of a call or a transaction.
# Closing one (or letting it be deallocated, which closes it) would roll back, in the
# WAL index the processes share, a write the parent is still making, so the child
# keeps them here, unused and open, for the rest of its life.
_KEPT: list[sqlite3.Connection] = []
_POOLS: "weakref.WeakSet[Pool]" = weakref.WeakSet()
_CONNECTIONS: "weakref.WeakSet[_Connection]" = weakref.WeakSet()  # every connection the package opened
# Held to add to _CONNECTIONS and to read it: a set that another thread adds to while it is read raises RuntimeError.
_CONNECTIONS_GUARD = threading.RLock()
# From just before a fork to just after it, in the forking thread: the write locks it holds,
# the connections whose statements it keeps from starting, the checkpoints it keeps from
# running (see _before_fork).
_HELD: list[_WriteLock] = []
_GUARDED: list[_Connection] = []
_PAUSED: list[Checkpointer] = []


class _Waiter:
    """A thread waiting for a _WriteLock: its connection, since when it waits, and the gate it sleeps on."""

    __slots__ = ("conn", "since", "gate", "dozing")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.since = conn, time.monotonic()
        self.gate = threading.Lock()  # held while the waiter sleeps; wake() releases it
        self.gate.acquire()
        # Set once it has woken and found the lock taken: from then on it sleeps until its
        # hand-off is due, and wake() leaves it asleep until then.
        self.dozing = False


class _WriteLock(dict[int, sqlite3.Connection]):
    """The in-process write lock of one database file, shared by the package's connections to it.

    transaction() takes it before BEGIN IMMEDIATE: threads waiting for SQLite's write
    lock sleep in its busy handler in steps of up to 100 ms and miss the moment it
    frees, while threads waiting here wake at once (10 writing threads: write p99
    185 -> 53 ms). Between processes, once they are seen writing the same file, its
    holder also takes the process's turn (see _turn) before BEGIN IMMEDIATE, and keeps
    it while the lock passes between this process's threads.

    The lock is a one-entry dict, {0: the connection holding it}: taking it is
    ``lock.setdefault(0, conn) is conn`` and giving it back ``lock.pop(0, None)``,
    each one C call that records or clears the holder in the same step. An exception
    arriving at any point (a signal handler's) therefore leaves a record that says
    whether the interrupted connection holds it.

    A freed lock goes to whoever asks first, so a thread writing in a loop keeps it
    (and its connection's warm page cache) while the others sleep, each on a gate of
    its own. Giving the lock back wakes the longest waiter. Once the holder has had
    the lock for HANDOFF_SECONDS while someone waited (counted from the longest
    waiter's arrival or the last time a waiter got the lock, whichever is later), the
    lock is handed to the longest waiter instead. A waiter that woke and found the
    lock taken again sleeps until its hand-off is due, rather than being woken by
    every release. The task queue's calls queue on it instead while it is held, and one
    of their threads writes them all (see _combine).
    """

    __slots__ = ("_guard", "_queue", "last_begin", "paused_steps", "busy_until", "shared_until", "turns_from",
                 "stray_until", "probe_at", "handed", "turn", "checkpointer", "calls", "calls_guard", "leader",
                 "batch")

    def __init__(self, path: str) -> None:
        super().__init__()
        self._guard = threading.Lock()
        self._queue: collections.deque[_Waiter] = collections.deque()  # oldest first
        self.last_begin = -math.inf  # when transaction() last sent BEGIN on the file, in any thread
        self.paused_steps = 0  # BEGINs still to wait in steps after a pause (see PAUSE_SECONDS)
        # Until this time.monotonic(), another process is taken to be writing the file:
        # transaction() then waits for SQLite's write lock in short steps (the process's
        # first BEGIN on the file sets it FIRST_SECONDS ahead) ...
        self.busy_until = 0.0
        # ... and, until this one, takes this process's turn to write the file first
        # (not before turns_from: until then the turn is taken to be stuck, see transaction).
        self.shared_until = self.turns_from = 0.0
        # Until this one, a writer that takes no turn is taken to be writing too: BEGIN
        # waits in steps even while this process holds the turn.
        self.stray_until = 0.0
        self.probe_at = 0.0  # when transaction() next looks whether another process has the turn
        self.turn = Turn(path)
        self.checkpointer = Checkpointer(path)  # transaction() tells it of every commit
        self.handed = 0.0  # when a waiter last got the lock
        # The task queue's calls waiting for a thread of this process to write them, that
        # thread's call, and the calls it is writing (see _combine).
        self.calls: list[Any] = []
        self.calls_guard = threading.Lock()
        self.leader: Any = None
        self.batch: list[Any] = []

    @property
    def holder(self) -> sqlite3.Connection | None:
        """Return the connection holding the lock, or None."""
        return self.get(0)

    @property
    def waiting(self) -> int:
        """Return how many threads wait for the lock, or for a thread to write their calls (see _combine)."""
        return len(self._queue) + len(self.calls) + len(self.batch) - (self.leader in self.batch)

    def _due(self, waiter: _Waiter) -> float:
        """Return the time.monotonic() past which the lock is handed to `waiter`, the longest waiter."""
        return max(waiter.since, self.handed) + HANDOFF_SECONDS

    def wait(self, conn: sqlite3.Connection, timeout: float) -> bool:
        """Take the lock for `conn`, waiting up to `timeout` seconds; return whether it was taken."""
        me = _Waiter(conn)
        deadline = me.since + timeout
        with self._guard:
            self._queue.append(me)
        try:
            # setdefault takes the lock if it is free, and finds it ours if wake() handed it over.
            while self.setdefault(0, conn) is not conn:
                now = time.monotonic()
                if now >= deadline:
                    return False
                # The cap bounds the wait should a wake-up be lost (a releasing thread
                # interrupted between its pop and its wake()).
                sleep = min(deadline - now, 0.25)
                until_due = self._due(me) - now
                if me.dozing and until_due > 0:
                    sleep = min(sleep, until_due)
                me.gate.acquire(timeout=sleep)
                me.dozing = True
            self.handed = time.monotonic()
            return True
        finally:
            with self._guard:
                self._queue.remove(me)

    def give_turn(self) -> None:
        """As the lock's holder, before giving it back: give up the process's turn if it is time."""
        if self.turn.release(local_waiters=self.waiting > 0):
            self.shared_until = time.monotonic() + BUSY_SECONDS  # another process waited for it

    def wake(self) -> None:
        """Wake the longest waiter (call after giving the lock back), handing it the lock once that is due.

        The thread giving the lock back holds the interpreter lock and would take it
        again before a woken waiter runs: without the hand-off, a thread writing in a
        tight loop keeps it from the others until their busy_timeout.
        """
        with self._guard:
            if not self._queue:
                return
            oldest = self._queue[0]
            if time.monotonic() > self._due(oldest):
                self.setdefault(0, oldest.conn)
            elif oldest.dozing:
                return  # it wakes by itself when its hand-off is due
            if oldest.gate.locked():  # only its owner acquires it, and only wake() releases it
                oldest.gate.release()


_WRITE_LOCKS: dict[str, _WriteLock] = {}
# How long a thread writing in a loop keeps the in-process write lock while others wait
# (see _WriteLock). 10 threads completing and claiming tasks on 2 cores, side by side with
# raw sqlite3 sending the same statements: 1 ms, 0.8-1.0x raw's tasks a second at a per-task
# p99 of 13 ms; 0.7 ms, a p99 of 11 ms for fewer tasks. The p99 is about this times the
# waiting threads; 10-20 ms buys throughput but puts the p99 on a cliff (see README).
HANDOFF_SECONDS = 0.001
# transaction() reads the following at each BEGIN (see transaction._begin). A BEGIN
# IMMEDIATE that took this long waited in SQLite's busy handler for another process
# (this process's writers queue on the in-process lock instead): for BUSY_SECONDS
# after the last such wait, BEGIN waits in steps of BUSY_STEP_MS.
BUSY_SEEN_SECONDS = 0.0005
BUSY_SECONDS = 1.0
BUSY_STEP_MS = 1
# So do a process's first BEGIN on a file and those of the next FIRST_SECONDS: other processes
# may be writing it unseen, their lock free between commits too briefly for SQLite's handler to
# catch (3 processes × 4 threads starting together: first calls of 80-330 ms in 1 run of 4; with
# 0.1 s of steps, 33 ms at most in 8 runs, the first BEGIN alone 71 ms). A BEGIN in steps sends
# 3 PRAGMAs: a lone writer's puts were 8 % slower meanwhile.
FIRST_SECONDS = 0.1
# Likewise PAUSE_STEPS BEGINs from one this long or more after the process's previous one on
# the file: another process may have started writing meanwhile, unseen. Beside a process writing
# in a loop, a process pruning audit rows had a BEGIN of 0.3-4.9 s in SQLite's handler in 6 of
# 80 runs; with these steps its slowest prune took 0.06 s in 80, as each step that finds the lock
# taken makes the file count as shared. Counted in BEGINs, not time: 0.1 s of steps after each
# pause made a writer resuming 8 % slower for that long (1-thread claims 0.83x raw instead of 0.92x).
PAUSE_SECONDS = 0.01
PAUSE_STEPS = 8
# Under the process's turn, BEGIN waits in SQLite's handler, which sleeps 1 ms, then 2 ms...:
# one that took longer than this found the lock taken at least twice, by a writer without turns.
# Shorter waits are a checkpoint's brief locks or a late interpreter lock (3 processes × 4
# threads: 0.6-1.2 ms, 1-3 times a run, each putting BEGIN in steps for BUSY_SECONDS).
STRAY_SEEN_SECONDS = 0.002
# How often a BEGIN with no other process in sight looks whether one has the turn (see _turn).
PROBE_SECONDS = 0.01
# A process's first BEGIN on a file that another process of the package writes without turns
# (it has seen no other writer) takes the turn and holds it before it asks SQLite for the lock,
# until no process writes without turns, this long at most: a process writing in a loop looks
# for the turn meanwhile and then waits for it. Otherwise the newcomer could take the lock
# between two of its commits, and the other process's next BEGIN would sleep in SQLite's
# handler while the newcomer wrote on (a write of 0.3-4.1 s in 6 of 20 side-by-side runs).
ARRIVAL_SECONDS = 2 * PROBE_SECONDS
ARRIVAL_STEP_SECONDS = 0.001  # how often the newcomer looks meanwhile
# The longest a BEGIN waits for the turn (3 processes × 4 threads: 20 ms at most) before
# it tries SQLite's lock without it. Should that lock be free, the turn's holder is not
# writing (a signal stopped it as it gave the turn up): the process then takes no turns,
# nor looks for them, for BUSY_SECONDS.
TURN_WAIT_SECONDS = 0.05

_WRITE_LOCKS_GUARD = threading.Lock()


class _Connection(sqlite3.Connection):
    """A connection opened by the package, with what transaction() and the SQL layer need to know.

    `owner` is the ident of the thread allowed to use it, or None once it is closing,
    closed, or a copy inherited by a forked child: the SQL layer compares it with the
    calling thread on every call. Pool.close() never closes it under a statement: the
    package holds `guard` around each statement it sends outside a transaction block,
    and `blocks` (the depth of open transaction() blocks) defers the close to the end
    of the outermost block. `busy_ms`, when not None, is the busy_timeout a BEGIN in
    short steps lowered and has yet to give back (transaction() does, at the latest
    as the next block starts).
    """

    __slots__ = ("owner", "thread", "thread_name", "pid", "path", "write_lock", "guard", "blocks", "busy_ms",
                 "epoch", "began", "closing", "closed", "__weakref__")

    owner: int | None
    thread: int
    thread_name: str
    pid: int
    path: str
    write_lock: _WriteLock | None
    guard: threading.RLock
    blocks: int
    busy_ms: int | None
    epoch: int
    began: bool
    closing: bool
    closed: bool

    def close(self) -> None:
        """Close the connection; the file's last one open in this process closes the checkpoints' connection too.

        Otherwise that one would stay open up to _checkpointer.IDLE_SECONDS, and with it
        the WAL, which SQLite folds into the database and deletes as the last connection
        closes: a copy of the database file alone would miss the latest commits. It also
        closes the lock file (see _turn), unless turns were waited for: the process's next
        write there counts as its first.
        """
        super().close()
        self.closed = True
        lock = self.write_lock
        if lock is None or self.pid != os.getpid():
            return
        with _CONNECTIONS_GUARD:
            others = any(conn.write_lock is lock and not conn.closed for conn in _CONNECTIONS)
        if not others:
            lock.checkpointer.close()
            lock.turn.close_idle()
            lock.last_begin = -math.inf


def _write_lock(path: str) -> _WriteLock:
    key = os.path.realpath(path)
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.get(key)
        if lock is None:
            lock = _WRITE_LOCKS[key] = _WriteLock(key)
        return lock


def _refuse_memory(path: str) -> None:
    # A plain name never has URI meaning here (connections are opened with uri=False),
    # so "mode=memory.db" is a file; names shaped like in-memory URIs are refused as
    # what their author probably meant.
    in_memory = path in ("", ":memory:") or path.startswith("file::memory:") or (
        path.startswith("file:") and "mode=memory" in path.partition("?")[2])
    if in_memory:
        raise ConfigurationError(
            f"{path!r}: an in-memory database cannot be shared by per-thread connections; "
            "use a file path (a temporary directory in tests)"
        )


def _path(path: StrOrBytesPath) -> str:
    """Return `path` as text (a bytes path decoded as the file system does), refusing in-memory names."""
    text = _values.file_path(path, "a database path")
    _refuse_memory(text)
    return text


def create_private_file(path: str) -> None:
    """Create `path` readable and writable by its owner only (whatever the umask), unless it already exists.

    SQLite gives the -wal and -shm files the mode of the database file.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise DatabaseFileError(f"{path}: cannot create the database file: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)  # a umask such as 0o277 would otherwise leave it read-only
    finally:
        os.close(fd)


def connect(path: StrOrBytesPath, *, readonly: bool = False,
            allow_rollback_journal: bool = False) -> sqlite3.Connection:
    """Open one connection to `path` with every PRAGMA applied and read back.

    The connection belongs to the calling thread. With `readonly`, the file is
    opened read-only and must exist; journal_mode is then read, not changed, and a
    mismatch is left for the caller to report. `allow_rollback_journal` accepts the
    rollback journal (with synchronous=FULL) where the file system cannot hold a WAL.
    """
    path = _path(path)
    if readonly:
        target, uri = Path(path).absolute().as_uri() + "?mode=ro", True
    else:
        create_private_file(path)
        target, uri = path, False
    with _OPENING:
        try:
            conn = sqlite3.connect(
                target, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                check_same_thread=False, uri=uri, factory=_Connection,
            )
        except sqlite3.Error as exc:
            raise DatabaseFileError(f"{path}: cannot open: {exc}") from exc
        conn.owner = conn.thread = threading.get_ident()
        conn.thread_name = threading.current_thread().name
        conn.pid = os.getpid()
        conn.path = path
        conn.write_lock = None if readonly else _write_lock(path)
        conn.guard = threading.RLock()
        conn.blocks = conn.epoch = 0
        conn.busy_ms = None
        conn.began = conn.closing = conn.closed = False
        with _CONNECTIONS_GUARD:
            _CONNECTIONS.add(conn)
        try:
            _configure(conn, path, readonly, allow_rollback_journal)
        except BaseException:
            conn.close()
            raise
    return conn


def _configure(conn: sqlite3.Connection, path: str, readonly: bool, allow_rollback_journal: bool) -> None:
    settings = [(name, value) for name, value in PRAGMAS if not (readonly and name == "journal_mode")]
    if not readonly and _set_pragma(conn, path, "journal_mode", "wal") != "wal":
        if not allow_rollback_journal:
            raise ConfigurationError(
                f"{path}: SQLite cannot use WAL here (journal_mode stays"
                f" {conn.execute('PRAGMA journal_mode').fetchone()[0]!r}): the file system cannot share the"
                " memory map of the -shm file WAL needs (typical of network file systems). Move the database"
                " to a local disk, or accept the rollback journal, where readers and the writer wait for"
                " each other: abathur_db.open(path, allow_rollback_journal=True)"
            )
        settings = [(name, ROLLBACK_JOURNAL_PRAGMAS.get(name, value)) for name, value in settings]
    for name, wanted in settings:
        current = _set_pragma(conn, path, name, wanted)
        if current != wanted:
            raise ConfigurationError(f"{path}: PRAGMA {name} is {current!r} after setting it to {wanted!r}")


def _set_pragma(conn: sqlite3.Connection, path: str, name: str, wanted: object) -> object:
    """Set PRAGMA `name` to `wanted` unless it already has that value; return the value read back."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    pause = 0.001
    while True:
        try:
            current = conn.execute(f"PRAGMA {name}").fetchone()[0]
            if current != wanted:
                # Names and values come from PRAGMAS above: PRAGMA takes no bound parameters.
                conn.execute(f"PRAGMA {name} = {wanted}").fetchall()
                current = conn.execute(f"PRAGMA {name}").fetchone()[0]
            return current
        except sqlite3.OperationalError as exc:
            # Switching a new file to WAL while another process does the same fails
            # with "database is locked" at once, without calling the busy handler.
            if exc.sqlite_errorcode & 0xFF != _SQLITE_BUSY or time.monotonic() > deadline:
                raise translate(exc, path) from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        except sqlite3.Error as exc:
            raise translate(exc, path) from exc


class _Slot:
    """Holds one thread's connection; its death (with the thread) closes the connection."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


def close_connection(conn: _Connection) -> None:
    """Close `conn` now, or, while a transaction block is open on it, as that block ends.

    Never under a statement: a statement in progress holds the connection's guard,
    which this waits for. From then on the SQL layer refuses calls on it.
    """
    conn.owner = None
    conn.closing = True
    if conn.pid != os.getpid():
        _close_inherited(conn)
        return
    with conn.guard:
        if not conn.blocks:
            conn.close()


def _close_inherited(conn: _Connection) -> None:
    # SQLite's own advice for a forked child (its test/forktest.c): close the
    # inherited connections before opening new ones. While a copy stays open, SQLite
    # in the child believes it already holds the parent's file locks and never takes
    # them for the child's own connections; the parent's last close then deletes the
    # WAL under the child's writes. Closing a copy that is idle leaves the parent's
    # files alone (the parent's locks stop the last-connection cleanup). A copy that
    # was in a call or a transaction is kept: closing it would roll back, in shared
    # memory, what the parent is still writing.
    if conn.guard.acquire(blocking=False):  # else a thread the fork left behind was inside a statement
        try:
            if not conn.blocks and not _in_transaction(conn):
                conn.close()
                return
        finally:
            conn.guard.release()
    _keep_forever(conn)


def _in_transaction(conn: sqlite3.Connection) -> bool:
    try:
        return conn.in_transaction
    except sqlite3.ProgrammingError:  # closed already
        return False


def _keep_forever(conn: sqlite3.Connection) -> None:
    _KEPT.append(conn)
    try:
        import ctypes
    except ImportError:  # pragma: no cover - CPython always has ctypes
        return
    # A reference never given back: not even the interpreter's exit can deallocate
    # the copy (deallocating closes it, and closing rolls back).
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


def _release_slot(registry: dict[int, weakref.finalize[..., _Slot]], key: int, conn: _Connection) -> None:
    registry.pop(key, None)
    close_connection(conn)


class Pool:
    """Per-thread connections to one database file.

    `connection()` returns the calling thread's own connection, opening it on first
    use; no other thread may use it. A connection is closed when its thread ends, or
    by `close()`, which closes every connection of the pool, whichever thread uses
    it, without cutting a statement or a transaction block in half. After
    ``os.fork()`` the child closes its copies of the parent's idle connections and
    opens connections of its own. The path is made absolute when the pool is
    created: a later ``os.chdir`` changes nothing.
    """

    def __init__(self, path: StrOrBytesPath, *, allow_rollback_journal: bool = False) -> None:
        self.path = os.path.abspath(_path(path))
        self.allow_rollback_journal = allow_rollback_journal
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
        self._finalizers: dict[int, weakref.finalize[..., _Slot]] = {}

    def connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use."""
        try:
            conn: sqlite3.Connection = self._local.slot.conn  # threading.local's attributes are untyped
            return conn
        except AttributeError:
            return self._open_for_this_thread()

    def _open_for_this_thread(self) -> sqlite3.Connection:
        if self._closed:
            raise ConfigurationError(f"{self.path}: the pool is closed")
        # connect() opens a _Connection, and says sqlite3.Connection to its other callers.
        conn = cast(_Connection, connect(self.path, allow_rollback_journal=self.allow_rollback_journal))
        slot = _Slot(conn)
        key = next(self._keys)
        with self._lock:
            self._finalizers[key] = weakref.finalize(slot, _release_slot, self._finalizers, key, conn)
        self._local.slot = slot
        return conn

    @property
    def open_connections(self) -> int:
        """Return how many connections the pool holds (not counting those closing as their block ends)."""
        return len(self._finalizers)

    def close(self) -> None:
        """Close every connection of the pool, whichever thread uses it.

        Idle connections close at once; one running a statement closes as soon as the
        statement ends (this waits for it); one inside a transaction block closes when
        the block ends, so the block commits or rolls back whole. Any later call on a
        connection of the pool raises ConfigurationError.
        """
        with self._lock:
            self._closed = True
            finalizers = list(self._finalizers.values())
            self._local = threading.local()
        for finalizer in finalizers:
            finalizer()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<abathur_db.Pool {self.path!r} connections={self.open_connections}>"

    def _after_fork_in_child(self) -> None:
        # Copies belonging to other threads were already released the same way when
        # Python discarded those threads.
        for finalizer in list(self._finalizers.values()):
            finalizer()
        self._reset()


def sleep_on(gate: threading.Lock, timeout: float, guard: threading.Lock, gates: list[threading.Lock]) -> None:
    """Sleep until another thread releases `gate` (held) or `timeout` passes; then take it out of `gates` under `guard`.

    A waiter sleeps on a lock of its own rather than on a Condition, whose wait a signal
    handler's exception can end with the condition's lock released.
    """
    try:
        gate.acquire(timeout=timeout)
    finally:
        with guard:
            if gate in gates:
                gates.remove(gate)


class _Opening:
    """The process's connect() calls under way: a fork waits for them to end, and holds new ones back meanwhile.

    Each waits on a lock, not on a Condition a signal could leave unlocked (see sleep_on).
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._count = 0
        self._fork: threading.Lock | None = None  # held from a fork's hold() to its release()
        self._drained: list[threading.Lock] = []  # one per fork waiting for the calls under way, held until none is

    def __enter__(self) -> None:
        while True:
            with self._guard:
                fork = self._fork
                if fork is None:
                    self._count += 1
                    return
            with fork:  # until release()
                pass

    def __exit__(self, *exc_info: object) -> None:
        with self._guard:
            self._count -= 1
            if not self._count:
                for gate in self._drained:
                    gate.release()
                self._drained.clear()

    def hold(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the calls under way, and keep new ones from starting until release()."""
        drained = threading.Lock()
        drained.acquire()
        with self._guard:
            if self._fork is None:  # else another thread's fork holds them back already
                self._fork = threading.Lock()
                self._fork.acquire()
            if not self._count:
                return
            self._drained.append(drained)
        sleep_on(drained, timeout, self._guard, self._drained)

    def release(self) -> None:
        """Let connect() calls start again."""
        with self._guard:
            fork, self._fork = self._fork, None
        if fork is not None:
            fork.release()


_OPENING = _Opening()


class _ForkHold:
    """Stands for a thread about to fork in the queue of a file's write lock (see _before_fork)."""

    __slots__ = ("thread",)

    def __init__(self) -> None:
        self.thread = threading.get_ident()


def _before_fork() -> None:
    # A child cannot close a copy of a connection inside a write transaction without
    # undoing, in shared memory, what the parent is writing, and cannot write the file
    # while that copy stays open: the fork first waits, as a writer would, for the write
    # transactions of the process's other threads to end (not for one the forking
    # thread has open itself). Then for connections being opened, the statements the
    # package runs outside blocks and a checkpoint under way: a thread inside SQLite may
    # hold one of its process-wide mutexes, which the child would inherit locked.
    hold = cast(sqlite3.Connection, _ForkHold())
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS  # for all the waits together

    def left() -> float:
        return max(deadline - time.monotonic(), 0.0)

    with _WRITE_LOCKS_GUARD:
        locks = list(_WRITE_LOCKS.values())
    for lock in locks:
        if getattr(lock.holder, "thread", None) == threading.get_ident():
            continue
        try:
            if lock.setdefault(0, hold) is not hold:
                lock.wait(hold, left())
        finally:  # the record says whether the hold has the lock, whatever interrupted the wait
            if lock.get(0) is hold:
                _HELD.append(lock)
    _OPENING.hold(left())
    with _CONNECTIONS_GUARD:
        conns = [conn for conn in _CONNECTIONS if not conn.closed]
    for conn in conns:  # each held by a statement the package runs outside a block
        if conn.guard.acquire(timeout=left()):
            _GUARDED.append(conn)
    for lock in locks:
        lock.checkpointer.pause()
        _PAUSED.append(lock.checkpointer)


def _after_fork_in_parent() -> None:
    while _PAUSED:
        _PAUSED.pop().resume()
    while _GUARDED:
        _GUARDED.pop().guard.release()
    _OPENING.release()
    while _HELD:
        lock = _HELD.pop()
        try:
            if lock.turn.since:
                lock.give_turn()
        finally:
            lock.pop(0, None)
            if lock.waiting:
                lock.wake()


def _after_fork_in_child() -> None:
    global _WRITE_LOCKS_GUARD, _CONNECTIONS_GUARD, _OPENING
    _OPENING = _Opening()
    _PAUSED.clear()  # what the fork held belongs to the parent's write locks, dropped below
    _HELD.clear()
    while _GUARDED:  # the copies are idle: the fork waited for their statements
        _GUARDED.pop().guard.release()
    # Another thread of the parent may have held a lock at the fork; the child's
    # connections, all opened from now on, take fresh ones.
    _WRITE_LOCKS_GUARD = threading.Lock()
    _CONNECTIONS_GUARD = threading.RLock()
    for lock in _WRITE_LOCKS.values():
        lock.turn.close()  # the parent's descriptor; the child opens its own when it needs one
        if lock.checkpointer.conn is not None:
            lock.checkpointer.conn.close()  # idle: the fork waited for any checkpoint under way
    _WRITE_LOCKS.clear()
    for conn in list(_CONNECTIONS):
        conn.owner = None  # the parent's: the SQL layer refuses it in the child
    for pool in list(_POOLS):
        pool._after_fork_in_child()
    for conn in list(_CONNECTIONS):
        if conn not in _KEPT:
            close_connection(conn)  # idle copies from connect() too; busy ones are kept


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
