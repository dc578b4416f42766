"""Whose turn it is to write, between the processes writing one file: a lock on byte 0 of ``<file>-lock``.

Between processes, SQLite's write lock goes to whichever connection asks while it is
free. Processes waiting for it either sleep in SQLite's busy handler (whose sleeps grow
to 100 ms: one process keeps the file while another starves) or retry often (see
pool.BUSY_STEP_MS: then the lock changes process every few commits, each time to
a connection whose page cache the other process's commits emptied). Once processes are
seen writing the same file, the package's writers therefore also take this turn before
``BEGIN IMMEDIATE``. A process keeps its turn across its threads' transactions for
TURN_SECONDS while other processes wait, then gives it up; a process whose writer comes
back within LINGER_SECONDS keeps it too. The process waiting for it sleeps in the kernel
and wakes the moment it is free. 3 processes × 4 threads completing
and claiming tasks, side by side on 2 cores: 1.2x the tasks a second of the steps alone,
at a per-task p99 of 12 ms and a slowest call of 20 ms (the steps: 13 ms and 22-116 ms).

The turn only schedules: SQLite's lock still decides who writes, so a writer without
the turn (another program, a file this process cannot open for writing, a wait for the
turn that ran out of busy_timeout) stays correct and waits for SQLite's lock as before.

POSIX locks belong to the process, not to a thread or a descriptor: one helper thread per
file blocks in the kernel for the turn on behalf of the process's waiting writer, which
sleeps on a condition with a time limit of its own (see pool.TURN_WAIT_SECONDS). Byte 1
carries a shared lock while a process waits, so that the holder can tell whether anyone
does.
"""

from __future__ import annotations

import os
import stat
import threading
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no turns, SQLite's lock alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["Turn"]

# How long a process keeps its turn while another process waits for it (its threads
# hand the in-process lock on meanwhile, see pool.HANDOFF_SECONDS). 3 processes × 4
# threads completing and claiming 5,000 tasks, medians of 6 runs: 3 ms gave a per-task
# p99 of 11 ms; 5 ms, 15 ms for 4 % more tasks a second; 6 ms, 17 ms for 6 %; 8 ms,
# 20 ms for 15 %. Each millisecond adds about two to every waiting process's wait. 100 ms
# turns lower the p99 again but let it jump to 200 ms with 12 threads a process (see README).
TURN_SECONDS = 0.003
# After giving up its turn to a waiting process, a process lets this pass before it asks
# again: the process woken needs a moment to run, and would otherwise find it taken back.
YIELD_SECONDS = 0.0003
# How long a process keeps its turn, within TURN_SECONDS, once its transaction ends with no
# thread of it waiting, in case its writer comes back: 3 processes of one thread each
# completing and claiming 20,000 tasks did 0.5x the tasks a second of raw sqlite3 giving
# the turn up after each transaction, 0.86x keeping it (2 processes: 0.73x, 0.84x), at a
# per-task p99 of 6.5 ms instead of 2.7. A process that goes idle keeps it this long.
LINGER_SECONDS = 0.0005


class Turn:
    """The turn to write the file at `path`, for this process; one per file, kept by its _WriteLock.

    Only the thread holding the file's in-process write lock calls take() and release().
    ``since`` is when this process took the turn, 0.0 while it does not hold it.
    """

    __slots__ = ("path", "since", "plain", "_yielded", "_fd", "_cond", "_want", "_helper", "_lent", "_linger_until")

    def __init__(self, path: str) -> None:
        self.path = path
        self.since = 0.0
        self.plain = False  # whether this process holds its shared lock on byte 3 (see write_plain)
        self._yielded = 0.0  # when this process last gave its turn to a waiting one
        self._fd: int | None = None  # the open lock file, -1 where there is none
        self._cond = threading.Condition()
        # The gate a writer sleeps on while the helper takes the turn for it, None while none waits.
        # A Condition.wait() would not do: a signal handler's exception raised as it returns can
        # leave its lock released, and the block's end then raises RuntimeError instead.
        self._want: threading.Lock | None = None
        self._helper: threading.Thread | None = None
        # The helper gives the turn up at _linger_until unless a writer takes it first (0.0: a
        # writer has it); _lent says whether it watches the turn meanwhile (see release()).
        self._lent = False
        self._linger_until = 0.0

    def take(self, timeout_seconds: float) -> bool:
        """Take the turn, waiting up to `timeout_seconds` (0: not at all); return whether this process holds it."""
        if self.since:
            if self._linger_until:
                with self._cond:  # the helper gives the turn up only while this is set
                    self._linger_until = 0.0
            if self.since:  # unless the helper gave it up first
                return True
        if self._open() < 0:
            return False
        now = time.monotonic()
        if now >= self._yielded + YIELD_SECONDS:
            with self._cond:  # the helper, granted the lock for a writer that gave up, may be giving it back
                # since is set before the lock is asked for: an exception (a signal's) after
                # the lock was granted leaves no turn held unknown to this process.
                self.since = now
                try:
                    fcntl.lockf(self._open(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)  # see close_idle()
                    return True
                except OSError:
                    self.since = 0.0
        if timeout_seconds <= 0:
            return False
        deadline = now + timeout_seconds
        if now < self._yielded + YIELD_SECONDS:
            time.sleep(min(self._yielded + YIELD_SECONDS, deadline) - now)
        gate = threading.Lock()
        gate.acquire()
        try:
            with self._cond:
                self._want = gate
                if self._helper is None:
                    self._start_helper()
                self._cond.notify()
            while not self.since and self._fd != -1 and (left := deadline - time.monotonic()) > 0:
                gate.acquire(timeout=left)
        finally:
            with self._cond:
                self._want = None
        return bool(self.since)

    def release(self, local_waiters: bool) -> bool:
        """Give the turn up, unless this process has had it less than TURN_SECONDS and a thread of it waits.

        After TURN_SECONDS it keeps the turn only while no other process waits for it.
        With no thread of it waiting, within TURN_SECONDS, it lends the turn to its helper
        (once it has one: once it has waited for the turn): the helper gives it up
        LINGER_SECONDS later unless a writer of this process takes it back meanwhile.
        Return whether another process was seen waiting.
        """
        if not self.since:
            return False
        now = time.monotonic()
        if local_waiters and now - self.since < TURN_SECONDS:
            return False
        others = self._others_wait()
        if local_waiters and not others:
            self.since = now  # nobody else wants it: look again in TURN_SECONDS
            return False
        if others and now - self.since < TURN_SECONDS and self._helper is not None:
            with self._cond:
                self._linger_until = min(now + LINGER_SECONDS, self.since + TURN_SECONDS)
                if not self._lent:
                    self._lent = True
                    self._cond.notify()
            return True
        with self._cond:
            # Unlocked first: an exception between the two leaves a turn believed held
            # but free, which take() and release() put right, never one held unknown.
            fcntl.lockf(self._open(), fcntl.LOCK_UN, 1, 0)
            self.since = self._linger_until = 0.0
            self._lent = False
        if others:
            self._yielded = now
        return others

    def arrive(self) -> bool:
        """Mark this process as one that writes the file; return whether another process is marked.

        The mark is a shared lock on byte 2 of the lock file, which this call creates if need
        be; it lasts until close_idle() or the process's exit.
        """
        with self._cond:
            fd = self._open()
            if fd < 0:
                return False
            others = _locked_elsewhere(fd, 2, keep=True)
            fcntl.lockf(fd, fcntl.LOCK_SH, 1, 2)  # waits out another arriving process's instant of a look
        return others

    def write_plain(self, plain: bool) -> None:
        """Say whether this process writes the file without turns: a shared lock on byte 3 while it does.

        A process arriving beside it waits for it to see the newcomer (see transaction._resume).
        Only once this process has marked itself as a writer (arrive()): until then the lock
        file may not be open, and the lock is left out.
        """
        with self._cond:
            if self._fd is not None and self._fd >= 0 and fcntl is not None:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_SH if plain else fcntl.LOCK_UN, 1, 3)
                except OSError:  # pragma: no cover - ENOLCK: arriving processes do not wait for this one
                    pass
            self.plain = plain

    def plain_elsewhere(self) -> bool:
        """Return whether another process writes the file without turns (see write_plain)."""
        with self._cond:
            fd = self._open()
            return fd >= 0 and _locked_elsewhere(fd, 3)

    def taken_elsewhere(self) -> bool:
        """Return whether another process holds the turn now (False where there are no turns).

        Until some process takes turns on the file, there is no lock file, and this opens none.
        """
        if self.since or (self._fd is None and not os.path.exists(self.path + "-lock")):
            return False
        with self._cond:
            fd = self._open()
            return fd >= 0 and _locked_elsewhere(fd, 0)

    def close_idle(self) -> None:
        """Close the lock file, and with it this process's mark, unless a turn is held or the helper uses it.

        Either way the process no longer writes without turns (see write_plain). The next
        arrive() or take() opens the file again. The other methods look up the descriptor
        under the same condition, so none uses one closed meanwhile.
        """
        with self._cond:
            if self._helper is None and self._fd is not None and self._fd >= 0 and not self.since:
                os.close(self._fd)
                self._fd = None
                self.plain = False
        if self.plain:
            self.write_plain(False)

    def close(self) -> None:
        """Close the lock file (in a forked child: its locks are the parent's, which closing leaves alone)."""
        if self._fd is not None and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def _open(self) -> int:
        """Return the lock file's descriptor, opening (or creating) it first; -1 where there is none."""
        if self._fd is None:
            name, flags = self.path + "-lock", os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
            try:
                try:
                    self._fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600)
                    os.fchmod(self._fd, stat.S_IMODE(os.stat(self.path).st_mode))  # as SQLite's -wal and -shm
                except FileExistsError:
                    self._fd = os.open(name, flags)
            except OSError:  # a read-only folder, another user's file: SQLite's lock alone
                if self._fd is not None:
                    os.close(self._fd)
                self._fd = -1
        return self._fd if fcntl is not None else -1

    def _others_wait(self) -> bool:
        """Return whether another process holds its shared lock on byte 1, as waiting processes do."""
        return _locked_elsewhere(self._open(), 1)

    def _start_helper(self) -> None:
        """Under _cond: start the helper thread."""
        self._helper = threading.Thread(target=self._run, name=f"abathur_db turn {self.path}", daemon=True)
        try:
            self._helper.start()
        except BaseException:
            # No thread to be had, or a signal handler's exception raised in start(), which
            # may leave the thread to die unrun, or to run: no longer this Turn's helper, it
            # then ends at once (see _run). The next wait starts another.
            self._helper = None
            raise

    def _run(self) -> None:
        """The helper: whenever a writer waits, block in the kernel for the turn, then hand it over.

        While the turn is lent to it (see release()), it also gives the turn up when its time is due.
        """
        with self._cond:  # take() holds it until start() has returned or raised
            if self._helper is not threading.current_thread():
                return
            fd = self._fd
        assert fd is not None
        while True:
            with self._cond:
                while self._want is None or self.since:  # a writer waits, and the turn is not this process's
                    if self._lent and self.since:
                        self._watch_lent(fd)
                    else:
                        self._cond.wait()
            try:
                # "A process waits". A holder looking at byte 1 holds it for an instant, which
                # this waits out: a waiter it missed would wait unseen while the turn stays put.
                fcntl.lockf(fd, fcntl.LOCK_SH, 1, 1)
            except OSError:  # pragma: no cover - EDEADLK, ENOLCK: the wait goes on unannounced
                pass
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
                failed = False
            except OSError:  # EDEADLK, ENOLCK: no turns from now on, SQLite's lock alone
                failed = True
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, 1)
            with self._cond:
                if failed:
                    self._fd = -1
                    os.close(fd)
                    if self._want is not None:
                        self._want.release()
                    return
                if self._want is not None and not self.since:
                    self.since = time.monotonic()
                    self._want.release()
                elif not self.since:
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)  # the writer gave up meanwhile

    def _watch_lent(self, fd: int) -> None:
        """Under _cond, in the helper: give up the turn lent to it if its time is due, else sleep until it is.

        Meanwhile a writer may take the turn back, and lend it again: the helper, asleep until
        the time first set, or the turn's end while a writer has it, then sleeps on. Woken once
        every LINGER_SECONDS at most, it takes little of the interpreter lock from the writers.
        """
        now = time.monotonic()
        if self._linger_until and now >= self._linger_until:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
            self.since = self._linger_until = 0.0
            self._lent = False
            self._yielded = now
        else:
            self._cond.wait(max((self._linger_until or self.since + TURN_SECONDS) - now, LINGER_SECONDS))


def _locked_elsewhere(fd: int, byte: int, keep: bool = False) -> bool:
    """Return whether another process holds a lock on `byte` of the lock file: try to take it, and give it back.

    With `keep`, the lock taken is left for the caller to change (POSIX locks of one process never
    conflict with each other: a process's own lock on `byte` is changed, not tested).
    """
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
    except OSError:
        return True
    if not keep:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, byte)
    return False
