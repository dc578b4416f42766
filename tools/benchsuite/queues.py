"""The three queues the queue workloads compare, each behind the same four calls.

- ``minimal``: raw sqlite3 on the smallest queue that does the job (one table, one
  partial index for the claim): the physical anchor the SPEC §6 queue bars are ratios to.
- ``raw_schema``: raw sqlite3 on the package's own schema, sending the package's own
  statements: the package minus its Python layers, so schema cost and wrapper cost split.
- ``package``: abathur_db itself, its worker claiming and then completing with the lease.

Every side runs each write in its own ``BEGIN IMMEDIATE … COMMIT``, as the package does.
The worker's calls of each side sit in one ``work_one`` method: when the package's API
changes, change ``PackageQueue.work_one`` and ``SchemaQueue.work_one``, nothing else.

The claim workloads also run ``package_fused`` (WORKER_VARIANTS): the package's worker
going from one task to the next with ``tasks.complete_and_claim``, one transaction a task,
beside the same through raw SQL (``raw_schema_fused``, the floor) and raw SQL taking the
package's in-process write lock around each call (``raw_schema_locked``). Between processes
they also run the same raw SQL in the package's transaction() blocks, which take its turns too
(``raw_schema_turns``), and ``package_sqlite_wait``: the package's worker with its BEGIN waiting
for other processes in SQLite's busy handler, as the raw sides do, instead of in short steps and turns.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import abathur_db
from abathur_db import _values, pool, tasks
from abathur_db.errors import BusyError

from .ops import claim_params, inserted_row
from .raw import Tuning, decode, dumps, raw_connect, raw_write

RESULT = {"ok": True}  # what every worker stores on completion
ITEM_BYTES = 90
PRIORITIES = 10

MINIMAL_SCHEMA = """
CREATE TABLE queue (
    id       INTEGER PRIMARY KEY,
    data     TEXT    NOT NULL,
    priority INTEGER NOT NULL,
    status   INTEGER NOT NULL DEFAULT 0,
    result   TEXT
);
CREATE INDEX queue_pending ON queue (priority DESC, id) WHERE status = 0;
"""
MINIMAL_PUT = "INSERT INTO queue (data, priority) VALUES (?, ?)"
MINIMAL_CLAIM = """
UPDATE queue SET status = 1
 WHERE id = (SELECT id FROM queue WHERE status = 0 ORDER BY priority DESC, id LIMIT 1)
RETURNING id, data, priority
""".strip()
MINIMAL_COMPLETE = "UPDATE queue SET status = 2, result = ? WHERE id = ? AND status = 1"

# The package's own statements, so this side differs from the package only in the Python around them.
SCHEMA_PUT = tasks.INSERT_SQL
SCHEMA_CLAIM = tasks.CLAIM_SQL
SCHEMA_COMPLETE = tasks.COMPLETE_SQL


def items(count: int) -> list[tuple[str, int]]:
    """Return `count` queue items: ~90 bytes of text each, priority i % 10."""
    filler = "summarise the report and list the open questions " * 2
    return [((f"item {i:07d} " + filler)[:ITEM_BYTES], i % PRIORITIES) for i in range(count)]


class _RawQueue:
    """Raw sqlite3 connections to one file, one per thread, all closed at once."""

    def __init__(self, path: str, tuning: Tuning = Tuning()) -> None:
        self.path, self.tuning = path, tuning
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = raw_connect(self.path, self.tuning)
            with self._guard:
                self._opened.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection opened through this queue."""
        with self._guard:
            for conn in self._opened:
                conn.close()
            self._opened.clear()


class MinimalQueue(_RawQueue):
    """The physical anchor: one small table, one partial index, raw sqlite3."""

    @staticmethod
    def create(path: str) -> None:
        """Create the database file with the minimal queue's table."""
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = wal").fetchall()
        conn.executescript(MINIMAL_SCHEMA)
        conn.close()

    def put(self, conn: sqlite3.Connection, item: tuple[str, int]) -> None:
        """Insert one item in its own transaction."""
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(MINIMAL_PUT, item)
        conn.execute("COMMIT")

    def bulk(self, conn: sqlite3.Connection, batch: list[tuple[str, int]]) -> None:
        """Insert every item with one executemany in one transaction."""
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(MINIMAL_PUT, batch)
        conn.execute("COMMIT")

    def work_one(self, conn: sqlite3.Connection) -> str | None:
        """Claim the most urgent item and complete it, a transaction each; return its id, None when empty."""
        rows = raw_write(conn, MINIMAL_CLAIM, ())
        if not rows:
            return None
        task_id = rows[0][0]
        raw_write(conn, MINIMAL_COMPLETE, (dumps(RESULT), task_id))
        return str(task_id)


def _task_params(item: tuple[str, int], now: str) -> dict[str, Any]:
    """Return the INSERT parameters tasks.create() would build for one item."""
    return {"id": _values.new_id(), "prompt": item[0], "agent_type": "general", "priority": item[1],
            "input_data": "{}", "max_retries": 3, "max_execution_timeout_seconds": 3600, "submitted_at": now,
            "now": now, "created_by": None, "parent_task_id": None, "dependencies": "[]", "session_id": None}


def _decode_task(row: tuple) -> dict:
    return decode(row, tasks.COLUMNS, tasks.JSON_COLUMNS)


class SchemaQueue(_RawQueue):
    """Raw sqlite3 sending the package's statements to the package's schema, decoding rows as it does."""

    @staticmethod
    def create(path: str) -> None:
        """Create the database file with the package's schema."""
        abathur_db.open(path).close()

    def put(self, conn: sqlite3.Connection, item: tuple[str, int]) -> dict:
        """Insert one task in its own transaction and return it, as tasks.create does."""
        params = _task_params(item, _values.now())
        raw_write(conn, SCHEMA_PUT, params)
        return _decode_task(inserted_row(params))

    def bulk(self, conn: sqlite3.Connection, batch: list[tuple[str, int]]) -> None:
        """Insert every task with one executemany in one transaction, one timestamp for all, as create_many."""
        now = _values.now()
        params = [_task_params(item, now) for item in batch]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(tasks.INSERT_SQL, params)
        conn.execute("COMMIT")

    def work_one(self, conn: sqlite3.Connection) -> str | None:
        """Claim the next task and complete it with the package's two statements; return its id."""
        rows = raw_write(conn, SCHEMA_CLAIM, claim_params())
        if not rows:
            return None
        task = _decode_task(rows[0])
        params = {"id": task["id"], "lease": task["lease"], "result_data": dumps(RESULT), "now": _values.now()}
        _decode_task(raw_write(conn, SCHEMA_COMPLETE, params)[0])
        return task["id"]


class FusedSchemaQueue(SchemaQueue):
    """Raw sqlite3 on the package's schema, completing each task and claiming the next in one transaction."""

    def __init__(self, path: str, tuning: Tuning = Tuning()) -> None:
        super().__init__(path, tuning)
        self._held: dict[int, dict] = {}  # by connection: the task the previous call claimed

    def work_one(self, conn: sqlite3.Connection) -> str | None:
        """Complete the task claimed by the previous call (claiming one first if none) and claim the next."""
        task = self._held.pop(id(conn), None)
        if task is None:
            rows = self._claim(conn)
            if not rows:
                return None
            task = _decode_task(rows[0])
        params = {"id": task["id"], "lease": task["lease"], "result_data": dumps(RESULT), "now": _values.now()}
        following = self._complete_and_claim(conn, params)
        if following is not None:
            self._held[id(conn)] = following
        return task["id"]

    @staticmethod
    def _claim(conn: sqlite3.Connection) -> list[tuple]:
        """Claim the next task in a transaction of its own; return the claim's rows."""
        return raw_write(conn, SCHEMA_CLAIM, claim_params())

    @staticmethod
    def _complete_and_claim(conn: sqlite3.Connection, params: dict[str, Any]) -> dict | None:
        """Complete the task of `params` and claim the next in one transaction; return that one, or None."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            following = _completed_then_claimed(conn, params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return following


class LockedFusedSchemaQueue(FusedSchemaQueue):
    """FusedSchemaQueue taking, around each call, the in-process write lock the package's connections share.

    Raw SQL handing the lock on as the package does (pool._WriteLock): what the package's
    code costs under concurrency apart from how it shares the lock. Other processes are
    still waited for in SQLite's busy handler, without the package's short retries.
    """

    def __init__(self, path: str, tuning: Tuning = Tuning()) -> None:
        super().__init__(path, tuning)
        self._lock = pool._write_lock(path)

    def work_one(self, conn: sqlite3.Connection) -> str | None:
        """Take the lock, then complete and claim as FusedSchemaQueue does; give the lock back."""
        lock = self._lock
        if lock.setdefault(0, conn) is not conn and not lock.wait(conn, pool.BUSY_TIMEOUT_SECONDS):
            raise BusyError("database is locked: the in-process write lock was held past busy_timeout")
        try:
            return super().work_one(conn)
        finally:
            lock.pop(0, None)
            if lock.waiting:
                lock.wake()


def _completed_then_claimed(conn: sqlite3.Connection, params: dict[str, Any]) -> dict | None:
    """Inside the caller's transaction: complete the task of `params`, claim the next; return that one, or None."""
    if not conn.execute(tasks.COMPLETE_ID_SQL, params).fetchall():
        raise AssertionError(f"task {params['id']} was not running under its lease")
    rows = conn.execute(SCHEMA_CLAIM, claim_params()).fetchall()
    return _decode_task(rows[0]) if rows else None


class PackageQueue:
    """abathur_db: a pool on the file, its functions for every call."""

    create = SchemaQueue.create

    def __init__(self, path: str, tuning: Tuning = Tuning()) -> None:
        self.pool, self.tuning = abathur_db.open(path), tuning

    def connection(self) -> sqlite3.Connection:
        """Return this thread's connection from the pool."""
        return self.tuning.apply(self.pool.connection())

    def close(self) -> None:
        """Close the pool."""
        self.pool.close()

    def put(self, conn: sqlite3.Connection, item: tuple[str, int]) -> dict:
        """Insert one task with tasks.create."""
        return tasks.create(conn, item[0], priority=item[1])

    def bulk(self, conn: sqlite3.Connection, batch: list[tuple[str, int]]) -> None:
        """Insert every task with one tasks.create_many."""
        tasks.create_many(conn, [{"prompt": text, "priority": priority} for text, priority in batch])

    def work_one(self, conn: sqlite3.Connection) -> str | None:
        """Claim the next task and complete it: the only place the workloads call the worker API."""
        task = tasks.claim_next(conn)
        if task is None:
            return None
        tasks.complete(conn, task["id"], task["lease"], RESULT)
        return task["id"]


class FusedPackageQueue(PackageQueue):
    """abathur_db, its worker completing each task and claiming the next in one call (tasks.complete_and_claim)."""

    def __init__(self, path: str, tuning: Tuning = Tuning()) -> None:
        super().__init__(path, tuning)
        self._held: dict[int, dict] = {}  # by connection: the task the previous call claimed

    def work_one(self, conn: sqlite3.Connection) -> str | None:
        """Complete the task claimed by the previous call (claiming one first if none) and claim the next."""
        task = self._held.pop(id(conn), None) or tasks.claim_next(conn)
        if task is None:
            return None
        following = tasks.complete_and_claim(conn, task["id"], task["lease"], RESULT)
        if following is not None:
            self._held[id(conn)] = following
        return task["id"]


class TurnsFusedSchemaQueue(FusedSchemaQueue):
    """FusedSchemaQueue on the package's connections, each call one of the package's transaction() blocks.

    The floor's statements scheduled as the package schedules its own: its in-process
    write lock, and between processes its turns and short steps. Against the package, the
    cost of its Python alone (argument checks, its one door for SQL, row shapes).
    """

    connection, close = PackageQueue.connection, PackageQueue.close

    def __init__(self, path: str, tuning: Tuning = Tuning()) -> None:
        self.pool, self.tuning = abathur_db.open(path), tuning
        self._held: dict[int, dict] = {}  # by connection: the task the previous call claimed

    @staticmethod
    def _claim(conn: sqlite3.Connection) -> list[tuple]:
        with abathur_db.transaction(conn):
            return conn.execute(SCHEMA_CLAIM, claim_params()).fetchall()

    @staticmethod
    def _complete_and_claim(conn: sqlite3.Connection, params: dict[str, Any]) -> dict | None:
        with abathur_db.transaction(conn):
            return _completed_then_claimed(conn, params)


class SQLiteWaitPackageQueue(FusedPackageQueue):
    """FusedPackageQueue, its BEGIN waiting for other processes in SQLite's busy handler, without steps or turns."""

    # No steps and no turns, not even in the process's first moments on the file (set before it
    # writes), after a pause, or beside another writer: this process's, until close(); spawned
    # workers set their own.
    KNOBS = ("BUSY_SECONDS", "FIRST_SECONDS", "PAUSE_STEPS", "ARRIVAL_SECONDS")

    def __init__(self, path: str, tuning: Tuning = Tuning()) -> None:
        self._knobs = {name: getattr(pool, name) for name in self.KNOBS}
        for name in self.KNOBS:
            setattr(pool, name, 0)
        super().__init__(path, tuning)

    def close(self) -> None:
        """Close the pool and give the KNOBS of abathur_db.pool their values back."""
        super().close()
        for name, value in self._knobs.items():
            setattr(pool, name, value)


SIDES = {"minimal": MinimalQueue, "raw_schema": SchemaQueue, "package": PackageQueue}
WORKER_VARIANTS = {"raw_schema_fused": FusedSchemaQueue, "raw_schema_locked": LockedFusedSchemaQueue,  # claims only
                   "raw_schema_turns": TurnsFusedSchemaQueue, "package_fused": FusedPackageQueue,
                   "package_sqlite_wait": SQLiteWaitPackageQueue}
# The same as raw_schema_locked and package_fused where no other process writes.
PROCESSES_ONLY = ("raw_schema_turns", "package_sqlite_wait")
TITLES = {"minimal": "minimal raw queue", "raw_schema": "raw SQL, package schema", "package": "abathur_db",
          "raw_schema_fused": "raw SQL, package schema, complete + claim in one transaction",
          "raw_schema_locked": "the same, under the package's in-process write lock",
          "raw_schema_turns": "the same, in the package's transaction blocks (its lock and its turns)",
          "package_fused": "abathur_db, complete_and_claim",
          "package_sqlite_wait": "the same, waiting for other processes in SQLite's busy handler"}
