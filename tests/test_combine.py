"""_combine: worker calls that would wait for the write lock, written in one transaction by one of their threads."""

from __future__ import annotations

import collections
import random
import signal
import threading
import time

import pytest

import abathur_db
from abathur_db import _combine, tasks
from abathur_db.errors import AbathurDBError, BusyError, ConfigurationError, LeaseLostError, StorageFullError
from abathur_db.transaction import transaction
from helpers import interrupting


class Caller(threading.Thread):
    """A thread making one call on a connection of its own; it keeps the outcome and the statements sent."""

    def __init__(self, pool, call) -> None:
        super().__init__(daemon=True)
        self.pool, self.call = pool, call
        self.result = self.error = None
        self.sent: list[str] = []

    def run(self) -> None:
        conn = self.pool.connection()
        conn.set_trace_callback(self.sent.append)
        try:
            self.result = self.call(conn)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.error = exc


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def queued(pool, conn, calls) -> list[Caller]:
    """Run each call on a thread of its own, started once the previous one has queued, while `conn` holds the lock."""
    lock = conn.write_lock
    callers = []
    with transaction(conn):
        for count, call in enumerate(calls, 1):
            callers.append(Caller(pool, call))
            callers[-1].start()
            wait_until(lambda: len(lock.calls) == count)
    for caller in callers:
        caller.join(10)
        assert not caller.is_alive()
    assert lock.calls == [] and lock.leader is None and lock.batch == []
    return callers


def commits(caller: Caller) -> int:
    return caller.sent.count("COMMIT")


def prompts(conn) -> list[str]:
    return sorted(prompt for (prompt,) in conn.execute("SELECT prompt FROM tasks"))


def claimed(conn, count: int) -> list[dict]:
    for n in range(count):
        tasks.create(conn, f"task {n}")
    return [tasks.claim_next(conn) for _ in range(count)]


def test_calls_queued_behind_the_lock_are_written_in_one_transaction_by_the_first(pool, conn):
    """Threads finding the lock held queue; the first writes every call with one COMMIT, each gets its own result."""
    running = claimed(conn, 3)
    callers = queued(pool, conn, [
        lambda c, task=task, n=n: tasks.complete(c, task["id"], task["lease"], {"n": n})
        for n, task in enumerate(running)
    ])
    assert [caller.error for caller in callers] == [None, None, None]
    assert [caller.result["id"] for caller in callers] == [task["id"] for task in running]
    assert [caller.result["result_data"] for caller in callers] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [commits(caller) for caller in callers] == [1, 0, 0]
    assert [tasks.get(conn, task["id"])["status"] for task in running] == ["completed"] * 3


def test_a_call_that_fails_in_a_batch_ends_alone_and_the_others_are_written(pool, conn):
    """A stale lease raises in its own thread; the batch is rolled back and written again without it."""
    running = claimed(conn, 3)
    stale = dict(running[1], lease="0" * 32)
    callers = queued(pool, conn, [
        lambda c: tasks.complete(c, running[0]["id"], running[0]["lease"]),
        lambda c: tasks.complete(c, stale["id"], stale["lease"]),
        lambda c: tasks.create(c, "created in the batch"),
    ])
    assert callers[0].error is None and callers[2].error is None
    assert isinstance(callers[1].error, LeaseLostError)
    assert callers[1].result is None
    assert [commits(caller) for caller in callers] == [1, 0, 0]  # the second try; the first rolled back
    assert callers[0].sent.count("ROLLBACK") == 1
    assert tasks.get(conn, running[0]["id"])["status"] == "completed"
    assert tasks.get(conn, running[1]["id"]) == running[1] | {"lease": running[1]["lease"]}
    assert tasks.get(conn, callers[2].result["id"])["prompt"] == "created in the batch"


def test_each_call_of_a_batch_that_fails_ends_with_its_own_error(pool, conn):
    """Every failing call gets its own error, in any order, and nothing else is lost."""
    running = claimed(conn, 4)
    ok, bad = running[::2], running[1::2]
    callers = queued(pool, conn, [
        lambda c, task=task, lease=lease: tasks.complete(c, task["id"], lease)
        for task, lease in [(bad[0], "1" * 32), (ok[0], ok[0]["lease"]), (bad[1], "2" * 32), (ok[1], ok[1]["lease"])]
    ])
    assert [type(caller.error) for caller in callers] == [LeaseLostError, type(None), LeaseLostError, type(None)]
    assert [tasks.get(conn, task["id"])["status"] for task in running] == ["completed", "running"] * 2


def test_a_refused_lock_ends_every_queued_call_with_busy_error(pool, conn):
    """When the leader's wait for the lock runs out, each queued call raises BusyError and none is written."""
    lock = conn.write_lock

    def short_wait(c):
        c.execute("PRAGMA busy_timeout = 300")  # on the caller's own connection, before it queues
        return tasks.create(c, "never")

    with transaction(conn):
        callers = [Caller(pool, short_wait) for _ in range(3)]
        for count, caller in enumerate(callers, 1):
            caller.start()
            wait_until(lambda: len(lock.calls) == count)
        for caller in callers:
            caller.join(10)
    assert [type(caller.error) for caller in callers] == [BusyError] * 3
    assert prompts(conn) == []
    assert lock.calls == [] and lock.leader is None


@pytest.mark.parametrize("interrupted", [0, 1], ids=["in-its-own-call", "in-another-threads-call"])
def test_an_exception_not_the_packages_ends_the_leaders_call_and_the_others_are_written_next(pool, conn, interrupted):
    """A signal handler's exception in the leader's thread before COMMIT is its own; the next leader writes the rest."""
    raised = []

    def body(n):
        def create(c):
            tasks.create(c, f"call {n}")
            if n == interrupted and not raised:
                raised.append(n)
                raise TimeoutError("a signal handler's")
        return create

    callers = queued(pool, conn, [lambda c, n=n: _combine.run(c, body(n)) for n in range(3)])
    assert isinstance(callers[0].error, TimeoutError)
    assert callers[1].error is None and callers[2].error is None
    assert prompts(conn) == ["call 1", "call 2"]
    assert [commits(caller) for caller in callers] == [0, 1, 0]  # the second caller led next


def test_a_signal_as_the_leader_commits_tells_the_others_their_calls_may_be_written(pool, conn, monkeypatch):
    """Past COMMIT the others cannot run again: each raises AbathurDBError saying so, and the rows are there."""
    leader: list[threading.Thread] = []

    exit_ = transaction.__exit__

    def interrupted_at_commit(block, *exc_info):
        exit_(block, *exc_info)
        if threading.current_thread() in leader:
            raise KeyboardInterrupt
        return False

    monkeypatch.setattr(transaction, "__exit__", interrupted_at_commit)

    def lead(c):
        leader.append(threading.current_thread())
        return tasks.create(c, "first")

    callers = queued(pool, conn, [lead, lambda c: tasks.create(c, "second")])
    assert isinstance(callers[0].error, KeyboardInterrupt)
    assert isinstance(callers[1].error, AbathurDBError) and "may or may not" in str(callers[1].error)
    assert prompts(conn) == ["first", "second"]


def test_a_failed_commit_ends_every_call_of_the_batch_with_its_error(pool, conn, monkeypatch):
    """Should COMMIT fail (rolled back instead here), each call of the batch raises that error, and none is written."""
    exit_ = transaction.__exit__

    def failing_commit(block, exc_type, exc, tb):
        if exc_type is not None or threading.current_thread() is threading.main_thread():
            return exit_(block, exc_type, exc, tb)
        exit_(block, StorageFullError, StorageFullError(), None)
        raise StorageFullError("database or disk is full, at COMMIT")

    monkeypatch.setattr(transaction, "__exit__", failing_commit)
    callers = queued(pool, conn, [lambda c, n=n: tasks.create(c, f"call {n}") for n in range(3)])
    assert [type(caller.error) for caller in callers] == [StorageFullError] * 3
    assert len({id(caller.error) for caller in callers}) == 1
    assert prompts(conn) == []


def test_a_signal_as_the_leader_wakes_the_callers_still_wakes_each_with_its_result(pool, conn, monkeypatch):
    """Past a COMMIT that was made, an exception while the leader wakes its callers leaves none of them asleep."""
    real = _combine._end
    struck = []

    def end_interrupted(calls):
        if len(calls) > 1 and not struck:
            struck.append(True)
            real(calls[:1])
            raise KeyboardInterrupt
        real(calls)

    monkeypatch.setattr(_combine, "_end", end_interrupted)
    callers = queued(pool, conn, [lambda c, n=n: tasks.create(c, f"call {n}") for n in range(3)])
    assert isinstance(callers[0].error, KeyboardInterrupt) and struck
    assert [caller.error for caller in callers[1:]] == [None, None]
    assert [caller.result["prompt"] for caller in callers[1:]] == ["call 1", "call 2"]
    assert prompts(conn) == ["call 0", "call 1", "call 2"]


def holding(pool, conn):
    """Start a thread holding the write lock in a block until the returned event is set; return it and the thread."""
    release = threading.Event()

    def hold():
        with transaction(c := pool.connection()):
            tasks.create(c, "held")
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    wait_until(lambda: 0 in conn.write_lock)
    return release, thread


def test_a_caller_interrupted_while_queued_leaves_the_queue_unwritten(pool, conn):
    """A signal in a thread waiting in the queue withdraws its call: the leader writes the others only."""
    lock = conn.write_lock
    release, holder = holding(pool, conn)
    first = Caller(pool, lambda c: tasks.create(c, "first"))
    first.start()
    wait_until(lambda: len(lock.calls) == 1)
    ran = []
    undo = interrupting(0.1)
    try:
        with pytest.raises(TimeoutError):
            _combine.run(conn, ran.append)
    finally:
        undo()
    assert len(lock.calls) == 1 and lock.leader is lock.calls[0]
    release.set()
    holder.join(10)
    first.join(10)
    assert first.error is None and ran == []
    assert prompts(conn) == ["first", "held"]
    assert lock.calls == [] and lock.leader is None


def test_a_leader_interrupted_before_the_lock_hands_the_lead_on(pool, conn):
    """A signal in the leader as it waits for the lock ends its call; the next caller leads and is written."""
    lock = conn.write_lock
    release, holder = holding(pool, conn)
    late = Caller(pool, lambda c: tasks.create(c, "late"))
    undo = interrupting(0.3)
    try:
        threading.Timer(0.05, late.start).start()
        with pytest.raises(TimeoutError):
            _combine.run(conn, lambda c: tasks.create(c, "interrupted"))
    finally:
        undo()
    assert len(lock.calls) == 1 and lock.leader is lock.calls[0]  # the late caller's
    release.set()
    holder.join(10)
    late.join(10)
    assert late.error is None
    assert prompts(conn) == ["held", "late"]
    assert lock.calls == [] and lock.leader is None


def test_a_leader_whose_pool_closes_ends_its_own_call_and_another_pools_call_is_written(pool, conn, db_path):
    """Two pools on one file share its write lock: closing one fails its leader's call, not the other pool's."""
    lock = conn.write_lock
    closing = abathur_db.open(db_path)
    release, holder = holding(pool, conn)
    callers = [Caller(closing, lambda c: tasks.create(c, "closed pool")),
               Caller(pool, lambda c: tasks.create(c, "open"))]
    for count, caller in enumerate(callers, 1):
        caller.start()
        wait_until(lambda: len(lock.calls) == count)
    closing.close()
    release.set()
    holder.join(10)
    for caller in callers:
        caller.join(10)
        assert not caller.is_alive()
    assert isinstance(callers[0].error, ConfigurationError)
    assert callers[1].error is None and callers[1].result["prompt"] == "open"
    assert prompts(conn) == ["held", "open"]
    assert lock.calls == [] and lock.leader is None


def test_a_call_inside_a_block_or_beside_another_process_does_not_queue(pool, conn):
    """Inside a block a call nests as before; while other processes write the file it waits for the lock itself."""
    lock = conn.write_lock
    with transaction(conn):
        tasks.create(conn, "nested")
        assert lock.calls == [] and lock.leader is None
    lock.shared_until = lock.last_begin + 60  # as when another process was seen writing
    with transaction(conn):
        caller = Caller(pool, lambda c: tasks.create(c, "waits"))
        caller.start()
        wait_until(lambda: lock.waiting == 1)
        assert lock.calls == [] and lock.leader is None
    caller.join(10)
    assert caller.error is None and commits(caller) == 1


def test_a_thread_holding_the_lock_through_another_connection_is_told_so_not_queued(pool, conn, db_path):
    """The same thread writing through a second connection inside a block still raises ConfigurationError."""
    second_pool = abathur_db.open(db_path)
    other = second_pool.connection()
    with transaction(conn):
        with pytest.raises(ConfigurationError, match="already holds the write lock"):
            tasks.create(other, "second connection")
    assert conn.write_lock.calls == [] and conn.write_lock.leader is None


def test_queued_calls_and_those_being_written_count_as_waiters(pool, conn):
    """Calls waiting in the queue, and other threads' calls the leader is writing, count as the lock's waiters."""
    lock = conn.write_lock
    waiting = []

    def create(c, prompt):
        waiting.append(lock.waiting)
        return tasks.create(c, prompt)

    with transaction(conn):
        callers = [Caller(pool, lambda c: _combine.run(c, lambda c: create(c, "a"))),
                   Caller(pool, lambda c: _combine.run(c, lambda c: create(c, "b")))]
        for count, caller in enumerate(callers, 1):
            caller.start()
            wait_until(lambda: len(lock.calls) == count)
        assert lock.waiting == 3  # the leader waits for the lock itself, and both calls for it
    for caller in callers:
        caller.join(10)
    assert [caller.error for caller in callers] == [None, None]
    assert waiting == [1, 1]  # while the leader writes the batch: the other thread's call, not its own
    assert lock.batch == [] and lock.waiting == 0


def test_ten_threads_complete_and_claim_every_task_once(pool, conn):
    """10 threads on a file completing and claiming in a loop: every task once, no error, fewer commits than calls."""
    count = 2_000
    tasks.create_many(conn, [{"prompt": f"task {n}", "priority": n % 10} for n in range(count)])
    done: list[str] = []
    errors: list[BaseException] = []
    calls = collections.Counter()
    start = threading.Barrier(10)

    def worker():
        try:
            c = pool.connection()
            sent: list[str] = []
            c.set_trace_callback(sent.append)
            start.wait(10)
            task = tasks.claim_next(c)
            calls["calls"] += 1
            while task is not None:
                following = tasks.complete_and_claim(c, task["id"], task["lease"], {"by": threading.get_ident()})
                calls["calls"] += 1
                done.append(task["id"])
                task = following
            calls["commits"] += sent.count("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - counted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(done) == count and len(set(done)) == count
    assert tasks.counts(conn) == {"pending": 0, "running": 0, "completed": count, "failed": 0, "cancelled": 0}
    assert calls["commits"] < calls["calls"]


@pytest.mark.slow
# An alarm that strikes a finalizer (transaction.__del__) is dropped there, as Python drops any
# exception raised in __del__, and reported as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_signals_striking_a_worker_thread_at_random_lose_no_call_and_leave_no_thread_waiting(pool, conn):
    """The main thread works beside 6 others while SIGALRM raises in it at random moments, for 6 s (seed printed).

    Every call interrupted ends in the main thread only, or in another thread with the
    "may or may not" error (the signal struck as the leader committed); none is lost or
    written twice, no thread waits for ever, and the queue ends empty.
    """
    seed = 20261130
    print(f"seed {seed}")
    rng = random.Random(seed)
    count = 20_000
    tasks.create_many(conn, [{"prompt": f"task {n}", "priority": n % 10} for n in range(count)])
    completed: list[str] = []
    errors: list[BaseException] = []
    stop = time.monotonic() + 6

    def work(main: bool) -> None:
        c = pool.connection()
        task = None
        while time.monotonic() < stop:
            try:
                task = task or tasks.claim_next(c)
                if task is None:
                    return
                following = tasks.complete_and_claim(c, task["id"], task["lease"])
                completed.append(task["id"])
                task = following
            except TimeoutError:
                task = None  # the call may have been written: its task stays running
            except AbathurDBError as exc:
                if "may or may not" not in str(exc):
                    errors.append(exc)
                task = None
            if main and rng.random() < 0.3:
                # Then every 50 ms: a main thread stuck waiting for a lost call still gets out.
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.00005, 0.002), 0.05)

    others = [threading.Thread(target=work, args=(False,), daemon=True) for _ in range(6)]
    for thread in others:
        thread.start()
    undo = interrupting(1000)
    try:
        work(True)
    except TimeoutError:
        pass  # struck outside a call
    finally:
        undo()
    for thread in others:
        thread.join(30)
        assert not thread.is_alive()
    lock = conn.write_lock
    assert errors == []
    assert len(completed) == len(set(completed)) > count // 2
    assert {tasks.get(conn, task_id)["status"] for task_id in completed} == {"completed"}
    assert lock.calls == [] and lock.batch == [] and lock.leader is None and lock.batch == []
