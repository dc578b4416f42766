"""Copy the WAL back into the database file beside the writers: one thread per file and process.

SQLite checkpoints inside the COMMIT that fills the WAL past wal_autocheckpoint pages,
and the package's writers hold their in-process lock (and their process's turn, see
_turn) until COMMIT returns: on a 50,000-task queue, one commit in about a hundred
took 2-3 ms copying pages, a third of a writer's time, while the file's other
writers waited. Every CHECKPOINT_EVERY of a process's commits to a file, this
thread runs a PASSIVE checkpoint on a connection of its own instead, which takes no
write lock: the copying happens while the writers go on, and SQLite's own checkpoint
finds less left to copy. It stays SQLite's, at a commit under the lock, because
only a checkpoint no writer overtakes lets the WAL start again from its beginning.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

__all__ = ["Checkpointer"]

# A process's commits to a file between background checkpoints. Every 50, side by side:
# one thread completing and claiming tasks, 1.05x the tasks a second; 10 threads and
# 3 processes × 4 threads, 1.0-1.03x at a per-task p99 of 11 ms instead of 12.5 ms.
CHECKPOINT_EVERY = 50
# The thread's connection, unused this long, is closed (opening one for each
# checkpoint slowed the writers by a sixth); the process's last connection to the file
# closes it at once (see pool._Connection.close).
IDLE_SECONDS = 1.0


class Checkpointer:
    """The background checkpoints of the file at `path`, for this process; one per file, kept by its _WriteLock.

    transaction() calls committed() after each commit, from any thread: a count lost
    to a race only delays a checkpoint. ``conn`` is the thread's connection, open from
    its first checkpoint until it has been idle for IDLE_SECONDS; ``running`` is true
    while a checkpoint is under way; ``last`` is what the last one reported (busy, WAL
    frames, frames copied), None if it failed.
    """

    __slots__ = ("path", "commits", "conn", "last", "runs", "running", "_cond", "_pending", "_thread", "_using")

    def __init__(self, path: str) -> None:
        self.path = path
        self.commits = 0
        self.conn: sqlite3.Connection | None = None
        self.last: tuple[int, int, int] | None = None
        self.runs = 0  # checkpoints tried
        self.running = self._pending = False
        self._cond = threading.Condition()
        # Held while a thread uses `conn`, and from pause() to resume(): close() and pause() wait on
        # it, not on a Condition a signal could leave unlocked (see pool.sleep_on).
        self._using = threading.Lock()
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        """Count one commit; every CHECKPOINT_EVERY, ask the thread (started the first time) for a checkpoint."""
        self.commits += 1
        if self.commits < CHECKPOINT_EVERY:
            return
        self.commits = 0
        with self._cond:
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"abathur_db checkpoint {self.path}",
                                                daemon=True)
                try:
                    self._thread.start()
                except BaseException as exc:
                    # No thread to be had (SQLite's own checkpoints do it all meanwhile), or a signal
                    # handler's exception raised in start(), which may leave the thread to die unrun,
                    # or to run: no longer this checkpointer's, it then ends at once (see _run), and
                    # no second thread shares the connection with it. The next checkpoint starts one.
                    self._thread = None
                    if isinstance(exc, RuntimeError):
                        return
                    raise
            self._cond.notify()

    def close(self) -> None:
        """Drop a checkpoint asked for and not begun, wait for one under way, and close the thread's connection."""
        with self._cond:
            self._pending = False
        with self._using:
            self._close()

    def pause(self) -> None:
        """Wait for a checkpoint under way, and keep another from starting, until resume()."""
        self._using.acquire()

    def resume(self) -> None:
        """Let checkpoints run again after pause()."""
        self._using.release()

    def _run(self) -> None:
        with self._cond:  # committed() holds it until start() has returned or raised
            if self._thread is not threading.current_thread():
                return
        while True:
            with self._cond:
                while not self._pending and self._cond.wait(IDLE_SECONDS if self.conn is not None else None):
                    pass
            with self._using:
                with self._cond:  # asked for, and not dropped by close() meanwhile
                    self._pending, wanted = False, self._pending
                if not wanted:  # idle for IDLE_SECONDS, or closed
                    self._close()
                    continue
                self.running = True
                try:
                    self.last = self._checkpoint()
                finally:
                    self.runs += 1
                    self.running = False

    def _checkpoint(self) -> tuple[int, int, int] | None:
        """Run one PASSIVE checkpoint; return what SQLite reports, None on failure (the connection then closed)."""
        try:
            if self.conn is None:
                # mode=rw: a database deleted or moved meanwhile is not created again.
                self.conn = sqlite3.connect(Path(self.path).as_uri() + "?mode=rw", uri=True, isolation_level=None,
                                            check_same_thread=False)
                self.conn.execute("PRAGMA busy_timeout = 0")  # another checkpoint under way: let it be
            row = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return (row[0], row[1], row[2])
        except sqlite3.Error:  # an I/O error, a full disk: SQLite's own checkpoint still runs at commits
            self._close()
            return None

    def _close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()
