"""Plain helpers the tests import: not fixtures, as a "spawn" worker calls one and the others wrap part of a test."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator


def on_data_version(waiting, nth: int = 2):
    """Return a trace callback that sets `waiting` at the `nth` PRAGMA data_version claim_next reads.

    The first is read before the claim it tries at once; the second, after that claim
    found nothing, as the wait begins; each later one after a poll interval of waiting.
    """
    seen = []

    def trace(sql: str) -> None:
        if sql == "PRAGMA data_version":
            seen.append(sql)
            if len(seen) == nth:
                waiting.set()

    return trace


@contextlib.contextmanager
def tracing(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """Collect the statements `conn` sends inside the block, as SQLite's trace shows them."""
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    try:
        yield sent
    finally:
        conn.set_trace_callback(None)


@contextlib.contextmanager
def unchecked(conn: sqlite3.Connection) -> Iterator[None]:
    """Let the block store rows that break CHECK constraints, as an upgrade keeps them or a buggy writer leaves them."""
    conn.execute("PRAGMA ignore_check_constraints = ON")
    try:
        yield
    finally:
        conn.execute("PRAGMA ignore_check_constraints = OFF")


def fork_child(work: Callable[[], object]) -> int:
    """Fork; run `work()` in the child, which exits with 0 on success; return the child's pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which coverage does not follow
        status = 1
        try:
            work()
            status = 0
        except BaseException as exc:  # noqa: BLE001 - reported through the exit status and stderr
            print(f"child failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        finally:
            os._exit(status)
    return pid


def fork_and_wait(work: Callable[[], object]) -> int:
    """Run `work()` in a forked child and return the child's exit code (0: it succeeded)."""
    return os.waitstatus_to_exitcode(os.waitpid(fork_child(work), 0)[1])


def until(check: Callable[[], object], seconds: float = 10) -> bool:
    """Poll `check()` every 5 ms until it is true or `seconds` have passed; return whether it came true."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class SignalledCondition(threading.Condition):
    """A Condition whose wait(), in the main thread, ends as a signal handler's exception can leave one: raised as
    the wait returns, with the lock released and not taken back. The block around it then raises RuntimeError."""

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is threading.main_thread():
            self._release_save()  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        return super().wait(timeout)


def interrupting(seconds: float):
    """Have SIGALRM raise TimeoutError in the main thread after `seconds`; return the function that undoes it."""
    def on_alarm(signum, frame):
        raise TimeoutError("alarm")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)

    def undo():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return undo
