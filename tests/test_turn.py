"""The turn to write a file, between processes (abathur_db._turn), with real processes on a real lock file."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import signal
import sqlite3
import stat
import threading
import time

import pytest

import abathur_db
from abathur_db import _turn, tasks
from abathur_db import pool as pool_module
from abathur_db._turn import Turn
from helpers import SignalledCondition, fork_and_wait, tracing, until

pytestmark = pytest.mark.skipif(_turn.fcntl is None, reason="turns need POSIX locks")
FORK = multiprocessing.get_context("fork")


def _other_process(path: str, commands, replies) -> None:  # pragma: no cover - runs in the child
    """Another process with a Turn on the same file, doing what the parent asks."""
    turn = Turn(path)
    while True:
        command, *args = commands.recv()
        if command == "exit":
            return
        if command == "others_wait":
            replies.send(turn._others_wait())
        elif command == "announce":  # as a waiting process does, without waiting
            _turn.fcntl.lockf(turn._open(), _turn.fcntl.LOCK_SH | _turn.fcntl.LOCK_NB, 1, 1)
            replies.send(True)
        elif command == "look":  # as a holder looking whether anyone waits: byte 1 exclusively, for a while
            _turn.fcntl.lockf(turn._open(), _turn.fcntl.LOCK_EX | _turn.fcntl.LOCK_NB, 1, 1)
            replies.send(True)
        elif command == "unlook":
            _turn.fcntl.lockf(turn._open(), _turn.fcntl.LOCK_UN, 1, 1)
            replies.send(True)
        elif command == "release":
            replies.send(turn.release(local_waiters=False))
        else:
            replies.send(getattr(turn, command)(*args))


class Other:
    """A child process holding, waiting for or looking at the turn, one call at a time."""

    def __init__(self, path: str) -> None:
        self._commands, child_commands = FORK.Pipe()
        child_replies, self._replies = FORK.Pipe()
        self.process = FORK.Process(target=_other_process, args=(path, child_commands, child_replies))
        self.process.start()

    def send(self, *command):
        self._commands.send(command)

    def reply(self, timeout: float = 10):
        assert self._replies.poll(timeout), "the other process did not answer"
        return self._replies.recv()

    def __call__(self, *command):
        self.send(*command)
        return self.reply()

    def close(self) -> None:
        self.send("exit")
        self.process.join(10)


@pytest.fixture
def other(pool, db_path):
    """Another process, on the database `pool` created (the lock file takes its mode)."""
    process = Other(str(db_path))
    yield process
    process.close()


def test_a_lone_process_marks_itself_a_writer_until_its_last_connection_closes_and_takes_no_turn(tmp_path):
    """A process's first BEGIN on a file marks it as a writer there (the lock file's byte 2); alone, it takes no turn.

    Its last connection to the file closes the lock file, and the mark with it.
    """
    path = str(tmp_path / "alone.db")
    other = Other(path)
    try:
        with abathur_db.open(path) as pool:
            conn = pool.connection()
            for i in range(50):
                tasks.create(conn, f"task {i}")
            lock = pool_module._write_lock(path)
            assert (lock.shared_until, lock.turn.since) == (0.0, 0.0)
            assert other("arrive") is True  # it sees this process's mark
            assert other("taken_elsewhere") is False
            other("close_idle")  # its own mark goes
        assert lock.turn._fd is None and other("arrive") is False
    finally:
        other.close()


def test_a_process_arriving_beside_a_writer_without_turns_holds_the_turn_until_that_one_takes_turns(
        tmp_path, monkeypatch):
    """The newcomer's first BEGIN takes the turn and holds it, SQLite's lock still free, while another process
    writes without turns; once none does, it goes on at once, long before ARRIVAL_SECONDS.

    A process writing in a loop, which has seen no other writer, looks for the turn
    meanwhile and waits for it from then on, rather than sleeping in SQLite's busy
    handler after the newcomer took SQLite's lock between two of its commits.
    """
    monkeypatch.setattr(pool_module, "ARRIVAL_SECONDS", 60)
    path = str(tmp_path / "shared.db")
    sqlite3.connect(path).close()  # the lock file takes the database's mode
    other = Other(path)
    opened = []
    try:
        assert other("arrive") is False  # the first writer of the file, alone
        other("write_plain", True)
        newcomer = threading.Thread(target=lambda: opened.append(abathur_db.open(path)))
        started = time.monotonic()
        newcomer.start()  # its first BEGIN applies the schema
        assert until(lambda: other("taken_elsewhere"))
        outsider = sqlite3.connect(path, timeout=0)
        try:
            outsider.execute("BEGIN IMMEDIATE")  # SQLite's lock is still free meanwhile
            outsider.execute("ROLLBACK")
        finally:
            outsider.close()
        time.sleep(0.2)
        assert not opened and other("taken_elsewhere")  # still held while the other writes without turns
        other("write_plain", False)  # as the other's next BEGIN does once it has seen the turn taken
        newcomer.join(30)
        assert opened and time.monotonic() - started < 30
        lock = pool_module._write_lock(path)
        assert lock.shared_until > time.monotonic()  # it takes turns from now on
        assert lock.stray_until == 0.0  # the wait before its BEGIN is no sign of a writer without turns
        assert until(lambda: not other("taken_elsewhere"))  # given up after the BEGIN's commit
    finally:
        other.close()
        for pool in opened:
            pool.close()


@pytest.mark.parametrize("holding", [False, True])
def test_a_process_arriving_beside_writers_that_take_turns_does_not_wait(tmp_path, monkeypatch, holding):
    """Beside marked writers none of which writes without turns, the newcomer's first BEGIN holds no turn
    (whether or not one of them holds it meanwhile), and takes turns from then on."""
    monkeypatch.setattr(pool_module, "ARRIVAL_SECONDS", 60)
    path = str(tmp_path / "shared.db")
    sqlite3.connect(path).close()
    other = Other(path)
    try:
        assert other("arrive") is False
        if holding:
            assert other("take", 0) is True
            releaser = threading.Timer(0.2, lambda: other("release"))
            releaser.start()
        started = time.monotonic()
        with abathur_db.open(path) as pool:
            tasks.create(pool.connection(), "after the schema")
            assert pool_module._write_lock(path).shared_until > time.monotonic()  # it takes turns from then on
        assert time.monotonic() - started < 30
        if holding:
            releaser.join(10)
        assert other("arrive") is False  # its mark went with its last connection
    finally:
        other.close()


def test_a_process_writing_without_turns_says_so_until_it_sees_another_writer(tmp_path):
    """A lone writer holds byte 3 of the lock file from its first BEGIN; it lets it go at the BEGIN that finds
    another process holding the turn, and with its last connection."""
    path = str(tmp_path / "plain.db")
    other = Other(path)
    try:
        with abathur_db.open(path) as pool:
            conn = pool.connection()
            tasks.create(conn, "alone")
            lock = pool_module._write_lock(path)
            assert lock.turn.plain and other("plain_elsewhere") is True
            assert other("take", 0) is True
            lock.probe_at = 0.0  # look for the turn at the next BEGIN, as every PROBE_SECONDS
            releaser = threading.Timer(0.1, lambda: other("release"))
            releaser.start()
            tasks.create(conn, "beside a writer")  # waits for the turn
            releaser.join(10)  # its answer read before the next question
            assert not lock.turn.plain and other("plain_elsewhere") is False
            lock.shared_until = 0.0  # as BUSY_SECONDS later, with no writer seen meanwhile
            tasks.create(conn, "alone again")
            assert lock.turn.plain and other("plain_elsewhere") is True
        assert not lock.turn.plain and other("plain_elsewhere") is False
    finally:
        other.close()


def test_a_waiting_process_gets_the_turn_the_moment_the_holder_gives_it_up(db_path, other):
    """The waiter sleeps in the kernel (no CPU burnt meanwhile), the holder sees it wait, and hands over at once."""
    assert other("take", 0) is True
    turn, got = Turn(str(db_path)), []
    assert turn.taken_elsewhere() and not turn.take(0)
    waiter = threading.Thread(target=lambda: got.append(turn.take(10)))
    waiter.start()
    assert until(lambda: other("others_wait"))
    cpu = time.process_time()
    time.sleep(0.1)
    assert time.process_time() - cpu < 0.03  # the helper blocks in the kernel; the waiter sleeps
    released = time.monotonic()
    assert other("release") is True  # it saw this process waiting
    waiter.join(10)
    assert got == [True] and 0 < turn.since - released < 0.5
    assert other("taken_elsewhere") is True
    with turn._cond:  # as if the writer it woke had not run yet: the helper must not take the turn again
        turn._want = threading.Lock()
        turn._cond.notify()
    cpu = time.process_time()
    time.sleep(0.1)
    assert time.process_time() - cpu < 0.03  # holding the turn, the helper waits for the next writer
    turn._want = None
    assert turn.release(local_waiters=False) is False  # nobody waits
    assert turn.since == 0.0 and other("taken_elsewhere") is False


def test_a_wait_for_the_turn_ends_at_its_timeout_and_leaves_no_turn_behind(db_path, other):
    """take() gives up at its timeout; when the turn frees later, the helper gives it back, unwanted."""
    assert other("take", 0) is True
    turn = Turn(str(db_path))
    started = time.monotonic()
    assert turn.take(0.2) is False
    assert 0.2 <= time.monotonic() - started < 2
    assert other("release") is True  # this process's helper still waits in the kernel
    assert until(lambda: not other("taken_elsewhere"))  # granted to the helper, and given back at once
    assert turn.since == 0.0 and not turn.taken_elsewhere()
    assert other("take", 1) is True and turn.taken_elsewhere()  # free for anyone


def test_an_exception_while_waiting_for_the_turn_leaves_no_turn_behind(db_path, other):
    """A signal handler's exception raised in the waiting writer: no turn is kept, the next one waits anew."""
    assert other("take", 0) is True
    turn = Turn(str(db_path))

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            turn.take(10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert turn.since == 0.0 and turn._want is None
    assert other("release") is True
    assert until(lambda: not other("taken_elsewhere"))
    assert turn.take(1) is True  # and taking it again works
    assert turn.release(local_waiters=False) is False


def test_the_wait_for_the_turn_is_no_condition_wait_a_signal_could_leave_unlocked(db_path, other):
    """A signal handler's exception raised as Condition.wait() returns can leave the condition's lock released, and
    the block around the wait then raises RuntimeError instead. The writer sleeps on a lock of its own."""
    assert other("take", 0) is True
    turn = Turn(str(db_path))
    turn._cond = SignalledCondition()
    assert turn.take(0.2) is False and turn._want is None


def test_a_process_keeps_its_turn_for_its_threads_until_another_process_waits(db_path, other, monkeypatch):
    """With threads of its own waiting, a process keeps the turn for TURN_SECONDS, then as long as no process waits."""
    turn = Turn(str(db_path))
    assert turn.take(0) is True
    assert turn.release(local_waiters=True) is False and turn.since  # within TURN_SECONDS
    monkeypatch.setattr(_turn, "TURN_SECONDS", 0.0)
    assert turn.release(local_waiters=True) is False and turn.since  # past it, but nobody else waits
    other.send("take", 10)
    assert until(turn._others_wait)
    assert turn.release(local_waiters=True) is True and turn.since == 0.0
    assert other.reply() is True


def _taken_after_waiting(turn: Turn, other) -> None:
    """Have `turn` wait for the turn `other` holds, so that its process has a helper, and take it."""
    assert other("take", 0) is True
    got = []
    waiter = threading.Thread(target=lambda: got.append(turn.take(10)))
    waiter.start()
    assert until(lambda: other("others_wait"))
    assert other("release") is True
    waiter.join(10)
    assert got == [True] and turn._helper is not None


def _held_while_the_other_waits(db_path, other, monkeypatch, linger: float, wait: float) -> Turn:
    """Return a Turn holding the turn, its helper running, while `other` waits up to `wait` s for it (long turns)."""
    monkeypatch.setattr(_turn, "TURN_SECONDS", 60.0)
    monkeypatch.setattr(_turn, "LINGER_SECONDS", linger)
    turn = Turn(str(db_path))
    _taken_after_waiting(turn, other)
    other.send("take", wait)
    assert until(turn._others_wait)
    return turn


def test_a_process_whose_writer_does_not_come_back_gives_its_lent_turn_up_after_linger_seconds(db_path, other,
                                                                                                monkeypatch):
    """With no thread of it waiting, within TURN_SECONDS, the turn stays LINGER_SECONDS with the helper, then goes."""
    turn = _held_while_the_other_waits(db_path, other, monkeypatch, linger=0.05, wait=2)
    released = time.monotonic()
    assert turn.release(local_waiters=False) is True  # another process waits ...
    assert turn.since and turn._lent  # ... but the turn is kept a moment
    assert other.reply() is True
    assert 0.045 <= time.monotonic() - released < 5
    assert turn.since == 0.0 and not turn._lent and turn._yielded >= released
    assert turn.take(0) is False and other("taken_elsewhere") is False  # this process waits YIELD_SECONDS first


def test_a_writer_coming_back_within_linger_seconds_keeps_the_turn_until_turn_seconds(db_path, other, monkeypatch):
    """The helper gives up a lent turn only while no writer has taken it back; past TURN_SECONDS it is not lent."""
    turn = _held_while_the_other_waits(db_path, other, monkeypatch, linger=0.02, wait=10)
    assert turn.release(local_waiters=False) is True and turn.since
    assert turn.take(0) is True and turn._linger_until == 0.0  # taken back: the helper keeps off
    time.sleep(5 * _turn.LINGER_SECONDS)
    assert turn.since
    monkeypatch.setattr(_turn, "TURN_SECONDS", 0.0)
    assert turn.release(local_waiters=False) is True and turn.since == 0.0  # given up at once
    assert other.reply() is True


def test_a_signal_as_the_helper_starts_leaves_no_helper_behind_and_the_next_wait_starts_one(db_path, other,
                                                                                           monkeypatch):
    """A signal handler's exception raised in Thread.start(): the thread, which runs here, ends at once, unknown to
    the Turn (a dead or second helper would hold a lent turn, or take it twice); the next wait starts a helper."""
    start, started = threading.Thread.start, []

    def interrupted(thread: threading.Thread) -> None:
        start(thread)
        started.append(thread)
        raise KeyboardInterrupt

    assert other("take", 0) is True
    turn = Turn(str(db_path))
    monkeypatch.setattr(threading.Thread, "start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        turn.take(10)
    monkeypatch.setattr(threading.Thread, "start", start)
    (orphan,) = started
    orphan.join(5)
    assert not orphan.is_alive() and turn._helper is None and turn._want is None
    _taken_after_waiting(turn, other)
    assert turn._helper is not orphan


def test_a_process_that_gave_up_its_turn_lets_the_waiting_one_take_it_first(db_path, other):
    """Right after handing over, this process's next writer waits YIELD_SECONDS rather than take the turn back."""
    turn = Turn(str(db_path))
    assert turn.take(0) is True
    assert other("announce") is True  # "waiting", though it will not take the turn
    assert turn.release(local_waiters=False) is True
    assert turn.take(0) is False  # free, but not even tried within YIELD_SECONDS
    started = time.monotonic()
    assert turn.take(1) is True  # nobody took it meanwhile: taken once the pause is over
    assert time.monotonic() - started >= _turn.YIELD_SECONDS * 0.9
    assert turn.release(local_waiters=False) is True


def test_a_lone_writer_notices_another_process_taking_turns_and_a_turn_held_idle_costs_one_wait(pool, db_path,
                                                                                                  other):
    """Within PROBE_SECONDS a writer sees the turn taken. Held by a process that does not write, it costs one wait
    of TURN_WAIT_SECONDS; SQLite's lock turns out free, and turns are left aside for BUSY_SECONDS."""
    conn = pool.connection()
    tasks.create(conn, "before")
    lock = pool_module._write_lock(str(db_path))
    assert lock.shared_until == 0.0
    assert other("take", 0) is True  # holds the turn, not SQLite's lock, and writes nothing
    time.sleep(2 * pool_module.PROBE_SECONDS)  # the previous write looked a moment ago
    started = time.monotonic()
    tasks.create(conn, "after")
    assert pool_module.TURN_WAIT_SECONDS <= time.monotonic() - started < 1
    assert lock.turns_from > time.monotonic() and lock.turn.since == 0.0
    started = time.monotonic()
    tasks.create(conn, "again")  # no wait this time
    assert time.monotonic() - started < pool_module.TURN_WAIT_SECONDS
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 3
    assert other("release") is True  # this process's helper still waited
    assert until(lambda: not other("taken_elsewhere"))


def test_an_exception_while_giving_the_turn_up_still_gives_the_in_process_lock_back(pool, db_path, monkeypatch):
    """A signal's exception raised as a block gives its turn up: the block committed, the in-process lock is free."""
    conn = pool.connection()
    lock = pool_module._write_lock(str(db_path))
    lock.shared_until = float("inf")  # as if another process had been seen writing
    release = Turn.release

    def interrupted(self, local_waiters):
        raise KeyboardInterrupt

    monkeypatch.setattr(Turn, "release", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tasks.create(conn, "kept")
    assert lock.holder is None and lock.turn.since  # the turn stays this process's, for now
    monkeypatch.setattr(Turn, "release", release)
    tasks.create(conn, "next")  # takes the turn it still holds, and gives it up after
    assert lock.holder is None and lock.turn.since == 0.0
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 2


@contextlib.contextmanager
def _outsider_holding(db_path, seconds: float, turn: Turn):
    """Let another program, which takes no turns, hold SQLite's write lock from the block's start until `seconds`
    after this process took `turn`, just before its BEGIN (however late a loaded machine lets it get there)."""
    outsider = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    held = threading.Event()

    def hold() -> None:
        outsider.execute("BEGIN IMMEDIATE")
        held.set()
        until(lambda: turn.since > 0)
        time.sleep(seconds)
        outsider.execute("COMMIT")

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        yield
    finally:
        holder.join(10)
        outsider.close()


def _under_the_turn(pool, db_path, rounds):
    """Create a task for each round, the process holding the turn, another program holding SQLite's lock
    for the round's seconds (None: not at all); return the statements each round sent."""
    conn = pool.connection()
    lock = pool_module._write_lock(str(db_path))
    lock.busy_until = lock.shared_until = float("inf")  # as if another process had been seen writing
    sent = []
    try:
        for seconds in rounds:
            with contextlib.ExitStack() as stack:
                if seconds is not None:
                    stack.enter_context(_outsider_holding(db_path, seconds, lock.turn))
                with tracing(conn) as traced:
                    tasks.create(conn, "a task")
            sent.append(traced)
    finally:
        lock.busy_until = lock.shared_until = lock.stray_until = 0.0
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == len(rounds)
    return sent


def _begins(sent):
    return [sql for sql in sent if sql.startswith(("PRAGMA", "BEGIN"))]


def test_a_begin_under_the_turn_waits_in_sqlites_handler_until_a_writer_without_the_turn_is_seen(pool, db_path):
    """Holding the turn, BEGIN sends no PRAGMA. Once it found SQLite's lock taken by a writer that takes no turn,
    BEGINs under the turn wait in steps for BUSY_SECONDS."""
    alone, first_seen, again = _under_the_turn(pool, db_path, [None, 0.1, 0.1])
    assert _begins(alone) + _begins(first_seen) == ["BEGIN IMMEDIATE"] * 2
    assert again[:2] == ["PRAGMA busy_timeout", f"PRAGMA busy_timeout = {pool_module.BUSY_STEP_MS}"]
    assert again.count("BEGIN IMMEDIATE") > 1


def test_a_begin_under_the_turn_delayed_less_than_stray_seen_seconds_sees_no_writer(pool, db_path, monkeypatch):
    """Under the turn, a BEGIN that waited less than STRAY_SEEN_SECONDS leaves the next in SQLite's handler.

    Such delays come from a checkpoint's brief locks or a late interpreter lock, not
    from a writer that takes no turn.
    """
    monkeypatch.setattr(pool_module, "STRAY_SEEN_SECONDS", 5.0)
    sent = _under_the_turn(pool, db_path, [0.1, 0.1])
    assert _begins(sent[0]) + _begins(sent[1]) == ["BEGIN IMMEDIATE"] * 2


def _write_until(path: str, stop, count) -> None:
    """Three threads creating tasks until `stop` is set; add how many they created to `count`."""
    pool = abathur_db.open(path)
    created = []

    def loop() -> None:
        while not stop.is_set():
            tasks.create(pool.connection(), "t")
            created.append(1)

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    pool.close()
    with count.get_lock():
        count.value += len(created)


def test_processes_writing_one_file_take_turns_and_lose_nothing(pool, db_path):
    """Two processes × 3 threads creating tasks at once start taking turns, and every row is there."""
    pool.close()
    lock = pool_module._write_lock(str(db_path))
    stop, count = FORK.Event(), FORK.Value("i", 0)
    child = FORK.Process(target=_write_until, args=(str(db_path), stop, count))
    child.start()
    watcher = threading.Thread(target=lambda: until(lambda: lock.turn.since > 0, 30) and stop.set())
    watcher.start()
    _write_until(str(db_path), stop, count)
    stop.set()
    watcher.join(60)
    child.join(60)
    assert child.exitcode == 0
    with abathur_db.open(str(db_path)) as pool:
        assert pool.connection().execute("SELECT count(*) FROM tasks").fetchone()[0] == count.value > 0
    assert lock.shared_until > 0  # it took turns, within 30 s of writing beside another process
    assert stat.S_IMODE(os.stat(f"{db_path}-lock").st_mode) == stat.S_IMODE(os.stat(db_path).st_mode) == 0o600


def test_a_lock_file_that_cannot_be_opened_leaves_sqlites_lock_alone(pool, db_path, other):
    """Where the lock file cannot be opened for writing, no turns are taken, and writes go on as before."""
    os.mkdir(f"{db_path}-lock")  # not a file: it cannot be opened
    turn = Turn(str(db_path))
    assert (turn.take(1), turn.taken_elsewhere(), turn.release(local_waiters=False)) == (False, False, False)
    assert other("take", 0) is False
    lock = pool_module._write_lock(str(db_path))
    lock.shared_until = float("inf")  # as if another process had been seen writing
    tasks.create(pool.connection(), "written")
    assert lock.turn.since == 0.0 and pool.connection().execute("SELECT count(*) FROM tasks").fetchone()[0] == 1


def test_a_forked_child_closes_the_parents_lock_file(pool, db_path):
    """The child's write locks start afresh: the descriptor of the parent's lock file is closed in it."""
    turn = pool_module._write_lock(str(db_path)).turn
    assert turn.take(0) is True
    fd = turn._fd

    def in_child() -> None:
        with pytest.raises(OSError):
            os.fstat(fd)
        assert pool_module._write_lock(str(db_path)).turn is not turn

    assert fork_and_wait(in_child) == 0
    assert turn.release(local_waiters=False) is False


def test_a_waiter_whose_announcement_falls_on_a_holders_look_announces_it_after(db_path, other):
    """A holder testing byte 1 as a process announces its wait: the announcement waits for the test to end."""
    assert other("take", 0) is True and other("look") is True
    turn, got = Turn(str(db_path)), []
    waiter = threading.Thread(target=lambda: got.append(turn.take(10)))
    waiter.start()
    time.sleep(0.05)
    assert other("unlook") is True
    assert until(lambda: other("others_wait"))  # seen waiting once the look is over
    assert other("release") is True
    waiter.join(10)
    assert got == [True] and turn.release(local_waiters=False) is False


def test_a_turn_the_kernel_refuses_ends_turns_for_the_process(db_path, other, monkeypatch):
    """If the blocking lock call fails (EDEADLK, ENOLCK), the waiter stops waiting at once and turns stop."""
    assert other("take", 0) is True
    lockf = _turn.fcntl.lockf

    def refusing(fd, cmd, *args):
        if cmd == _turn.fcntl.LOCK_EX:  # the helper's blocking call only
            raise OSError(errno.EDEADLK, "Resource deadlock avoided")
        return lockf(fd, cmd, *args)

    monkeypatch.setattr(_turn.fcntl, "lockf", refusing)
    turn = Turn(str(db_path))
    started = time.monotonic()
    assert turn.take(10) is False and time.monotonic() - started < 5
    assert turn._fd == -1 and turn.take(0) is False and not turn.taken_elsewhere()


def test_a_lock_file_whose_mode_cannot_be_set_is_not_used(pool, db_path, monkeypatch):
    """Creating the lock file but failing to give it the database's mode: closed, removed from use."""
    def refuse(fd, mode):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_turn.os, "fchmod", refuse)
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    turn = Turn(str(db_path))
    assert turn.take(0) is False and turn._fd == -1
    assert fds is None or len(os.listdir("/proc/self/fd")) == fds


def test_the_fork_hook_closes_every_lock_file_the_parent_opened(pool, db_path, monkeypatch):
    """What the child runs after fork closes the turns' descriptors and starts its write locks afresh."""
    turn = pool_module._write_lock(str(db_path)).turn
    assert turn.take(0) is True
    fd = turn._fd
    monkeypatch.setattr(os, "getpid", lambda: 0)  # as the child sees itself
    pool_module._after_fork_in_child()
    monkeypatch.undo()
    with pytest.raises(OSError):
        os.fstat(fd)
    assert turn._fd == -1 and pool_module._write_lock(str(db_path)).turn is not turn
