"""The measured operations (each a package call and the raw sqlite3 code doing the same work), and the run."""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import abathur_db
from abathur_db import _paging, _values, agents, audit, catalog, checkpoints, metrics, sessions, state, tasks

from .dataset import AGENT_TYPES, DAY_MS, MEMORY_OPERATIONS, METRIC_NAMES, PRIORITY_WEIGHTS, WORDS, Dataset, Scale, ts
from .raw import Tuning, decode, dumps, raw_write


@dataclass(frozen=True)
class Op:
    """One measured operation: the package call and the raw sqlite3 code doing the same work."""

    name: str
    title: str
    kind: str  # "read" or "write"
    sample: Callable[[random.Random], Any]  # draws one realistic parameter from the data set
    package: Callable[[sqlite3.Connection, Any], Any]
    raw: Callable[[sqlite3.Connection, Any], Any]
    prepare: StaleTasks | None = None  # untimed, before each timed call of either side


class StaleTasks:
    """Before each timed requeue, turn a few pending tasks into stale running ones; put the last ones back.

    A requeue timed on a queue with nothing stale would time a search that finds
    nothing. Each call restores exactly the rows the previous requeue changed.
    """

    RESTORE = ("UPDATE tasks SET status = 'pending', retry_count = :retry_count, started_at = :started_at,"
               " completed_at = :completed_at, error_message = :error_message,"
               " last_updated_at = :last_updated_at WHERE id = :id")

    def __init__(self, data: Dataset, count: int) -> None:
        self.count, self.long_ago = count, ts(data.start_ms)
        self.ids: Iterator[str] | None = None
        self.saved: list[dict] = []

    def __call__(self, conn: sqlite3.Connection) -> None:
        """Restore the previous call's tasks, then make `count` other pending tasks stale running ones."""
        with abathur_db.transaction(conn):
            self.restore(conn)
            if self.ids is None:  # pending claimable tasks, read once: a cycle of 50 calls' worth
                self.ids = itertools.cycle([i for (i,) in conn.execute(
                    "SELECT id FROM tasks INDEXED BY idx_tasks_claimable WHERE status = 'pending'"
                    " AND unmet_dependencies = 0 ORDER BY priority DESC, submitted_at LIMIT ?",
                    (50 * self.count,))])
            chosen = {"id" + str(k): next(self.ids) for k in range(self.count)}
            where = " WHERE id IN (" + ", ".join(":" + k for k in chosen) + ")"
            self.saved = [dict(zip(("id", "retry_count", "started_at", "completed_at", "error_message",
                                    "last_updated_at"), row)) for row in conn.execute(
                "SELECT id, retry_count, started_at, completed_at, error_message, last_updated_at FROM tasks"
                + where, chosen)]
            conn.execute("UPDATE tasks SET status = 'running', started_at = :t, last_updated_at = :t" + where,
                         {**chosen, "t": self.long_ago})

    def restore(self, conn: sqlite3.Connection) -> None:
        """Put back the tasks the last requeue changed, as they were before they were made stale."""
        with abathur_db.transaction(conn):
            conn.executemany(self.RESTORE, self.saved)
            self.saved = []


@dataclass
class Bench:
    """One run's database, data set, operations and settings: what every workload measures with."""

    pool: abathur_db.Pool
    conn: sqlite3.Connection  # the main thread's package connection; the raw side shares it
    path: str
    workdir: str
    data: Dataset
    ops: dict[str, Op]
    scale: Scale
    rng: random.Random
    tuning: Tuning
    seed: int


# Where a list's first page starts (abathur_db._paging): oldest first, newest first.
ROWID_MIN = _paging.ROWID_MIN
FIRST = {"start": _paging.FIRST, "start_rowid": ROWID_MIN}
NEWEST = {"start": _paging.LAST, "start_rowid": _paging.ROWID_MAX}
STALE_PER_REQUEUE = 5  # tasks each timed requeue_stale finds stale and requeues
CHECKPOINT_ITERATIONS = itertools.count(1_000_000)  # iterations no seeded checkpoint uses
_STATE_KEYS = itertools.count()


def build_ops(data: Dataset, limit: int = 100) -> dict[str, Op]:
    """Return every measured operation by name: the §5 catalog queries, then the extra writes.

    List queries ask for `limit` rows (the package's default, 100, unless told
    otherwise); time ranges are drawn to hold about that many rows.
    """
    sql = {entry.id: entry.sql for entry in catalog.CATALOG}
    now = ts(data.now_ms)  # requeue_stale "now": what T7's StaleTasks makes stale, and the seeded stale tasks
    ops: list[Op] = []

    def read(cid, title, sample, package, sql_params, columns, json_columns, one=False):
        statement = sql[cid]
        if one:
            def raw(conn, p):
                row = conn.execute(statement, sql_params(p)).fetchone()
                return None if row is None else decode(row, columns, json_columns)
        else:
            def raw(conn, p):
                return [decode(row, columns, json_columns) for row in conn.execute(statement, sql_params(p))]
        ops.append(Op(cid, title, "read", sample, package, raw))

    tc, tj = tasks.COLUMNS, tasks.JSON_COLUMNS
    ac, aj = agents.COLUMNS, agents.JSON_COLUMNS
    uc, uj = audit.COLUMNS, audit.JSON_COLUMNS
    cc, cj = checkpoints.COLUMNS, checkpoints.JSON_COLUMNS
    mc, mj = metrics.COLUMNS, metrics.JSON_COLUMNS
    sc, sj = sessions.COLUMNS, sessions.JSON_COLUMNS
    n_tasks, n_agents = data.counts["tasks"], data.counts["agents"]
    n_checkpoints, n_metrics = data.counts["checkpoints"], data.counts["metrics"]

    read("T1", "task by id", lambda r: r.choice(data.task_ids),
         tasks.get, lambda p: {"id": p}, tc, tj, one=True)
    ops.append(Op("T2", "next claimable task (claim_next)", "write", lambda r: None,
                  lambda c, p: tasks.claim_next(c),
                  lambda c, p: [decode(row, tc, tj) for row in raw_write(c, sql["T2"], claim_params())]))
    read("T3", "tasks by status, most urgent first",
         lambda r: r.choices(("pending", "running", "failed"), (6, 2, 2))[0],
         lambda c, p: tasks.list(c, status=p, limit=limit), lambda p: {"status": p, "limit": limit}, tc, tj)
    read("T4", "tasks of a session, newest first", lambda r: r.choice(data.session_ids),
         lambda c, p: tasks.list(c, session_id=p, limit=limit),
         lambda p: {"session_id": p, "limit": limit, **NEWEST}, tc, tj)
    read("T5", "tasks submitted in a time range", lambda r: data.window(n_tasks, limit, r),
         lambda c, p: tasks.list(c, submitted_since=p[0], submitted_until=p[1], limit=limit),
         lambda p: {"start": p[0], "start_rowid": ROWID_MIN, "until": p[1], "limit": limit}, tc, tj)
    read("T6", "children of a parent task", lambda r: r.choice(data.parent_ids),
         lambda c, p: tasks.list(c, parent_task_id=p, limit=limit),
         lambda p: {"parent_task_id": p, "limit": limit, **FIRST}, tc, tj)
    ops.append(Op("T7", f"requeue of {STALE_PER_REQUEUE} stale running tasks (requeue_stale)", "write",
                  lambda r: None, lambda c, p: tasks.requeue_stale(c, now=now),
                  lambda c, p: [decode(row, tc, tj) for row in raw_write(c, sql["T7"], {"now": now})],
                  StaleTasks(data, STALE_PER_REQUEUE)))

    def raw_t8(conn, p):
        row = conn.execute(sql["T8"], {"id": p}).fetchone()
        task = decode(row[:len(tc)], tc, tj)
        rest = row[len(tc):]
        task["session"] = None if rest[0] is None else decode(rest, sc, sj)
        return task

    ops.append(Op("T8", "task by id with its session", "read", lambda r: r.choice(data.task_ids),
                  tasks.get_with_session, raw_t8))
    ops.append(Op("T9", "next claimable task of one agent type (claim_next)", "write",
                  lambda r: r.choice(AGENT_TYPES), lambda c, p: tasks.claim_next(c, agent_type=p),
                  lambda c, p: [decode(row, tc, tj) for row in raw_write(c, sql["T9"], claim_params(agent_type=p))]))
    # An hour and five minutes on: the running tasks without an update for five minutes or more are stale
    # then (T7 has taken back the seeded stale ones by the time T10 runs).
    later = ts(data.now_ms + 3_900_000)
    read("T10", "stale running tasks, read only", lambda r: None, lambda c, p: tasks.stale(c, now=later, limit=limit),
         lambda p: {"now": later, "limit": limit, **FIRST}, tc, tj)
    read("A1", "agents of a task", lambda r: r.choice(data.started_task_ids),
         lambda c, p: agents.list(c, task_id=p, limit=limit),
         lambda p: {"task_id": p, "limit": limit, **FIRST}, ac, aj)
    read("A2", "agents of a session, newest first", lambda r: r.choice(data.session_ids),
         lambda c, p: agents.list(c, session_id=p, limit=limit),
         lambda p: {"session_id": p, "limit": limit, **NEWEST}, ac, aj)
    read("A3", "agents spawned in a time range", lambda r: data.window(n_agents, limit, r),
         lambda c, p: agents.list(c, spawned_since=p[0], spawned_until=p[1], limit=limit),
         lambda p: {"start": p[0], "start_rowid": ROWID_MIN, "until": p[1], "limit": limit}, ac, aj)
    read("U1", "audit of a task, newest first", lambda r: r.choice(data.started_task_ids),
         lambda c, p: audit.list(c, task_id=p, limit=limit),
         lambda p: {"task_id": p, "since": "", "limit": limit, **NEWEST}, uc, uj)
    read("U2", "latest audit rows", lambda r: None,
         lambda c, p: audit.list(c, limit=limit), lambda p: {"since": "", "limit": limit, **NEWEST}, uc, uj)
    read("U3", "audit of one memory operation type since a time",
         lambda r: (r.choice(MEMORY_OPERATIONS), ts(data.now_ms - r.randrange(3_600_000, 7 * DAY_MS))),
         lambda c, p: audit.list(c, memory_operation_type=p[0], since=p[1], limit=limit),
         lambda p: {"memory_operation_type": p[0], "since": p[1], "limit": limit, **NEWEST}, uc, uj)
    read("U4", "audit of a memory entry", lambda r: r.choice(data.memory_entry_ids),
         lambda c, p: audit.list(c, memory_entry_id=p, limit=limit),
         lambda p: {"memory_entry_id": p, "since": "", "limit": limit, **NEWEST}, uc, uj)
    read("C1", "latest checkpoint of a task", lambda r: r.choice(data.checkpoint_task_ids),
         checkpoints.load, lambda p: {"task_id": p}, cc, cj, one=True)
    read("C2", "checkpoints of a session", lambda r: r.choice(data.session_ids),
         lambda c, p: checkpoints.list(c, session_id=p, limit=limit),
         lambda p: {"session_id": p, "limit": limit, **FIRST}, cc, cj)
    read("C3", "checkpoints created in a time range", lambda r: data.window(n_checkpoints, limit, r),
         lambda c, p: checkpoints.list(c, created_since=p[0], created_until=p[1], limit=limit),
         lambda p: {"start": p[0], "start_rowid": ROWID_MIN, "until": p[1], "limit": limit}, cc, cj)
    read("M1", "metrics in a time range", lambda r: data.window(n_metrics, limit, r),
         lambda c, p: metrics.query(c, since=p[0], until=p[1], limit=limit),
         lambda p: {"start": p[0], "start_rowid": ROWID_MIN, "until": p[1], "limit": limit}, mc, mj)
    read("M2", "one metric in a time range",
         lambda r: (r.choice(METRIC_NAMES), *data.window(n_metrics, limit * len(METRIC_NAMES), r)),
         lambda c, p: metrics.query(c, name=p[0], since=p[1], until=p[2], limit=limit),
         lambda p: {"metric_name": p[0], "start": p[1], "start_rowid": ROWID_MIN, "until": p[2], "limit": limit},
         mc, mj)
    read("S1", "session by id", lambda r: r.choice(data.session_ids),
         sessions.get, lambda p: {"id": p}, sc, sj, one=True)

    def raw_k1(conn, p):
        row = conn.execute(sql["K1"], {"task_id": p[0], "key": p[1]}).fetchone()
        return None if row is None else json.loads(row[0])

    ops.append(Op("K1", "state value by task and key", "read", lambda r: r.choice(data.state_pairs),
                  lambda c, p: state.get(c, p[0], p[1]), raw_k1))

    ops.extend(_write_ops(data))
    return {op.name: op for op in ops}


def _write_ops(data: Dataset) -> list[Op]:
    """Return the writes the insert and mixed workloads use (package call and raw equivalent)."""
    tc, tj = tasks.COLUMNS, tasks.JSON_COLUMNS

    def task_sample(r):
        return (" ".join(r.choices(WORDS, k=r.randint(15, 80))), r.choices(range(11), PRIORITY_WEIGHTS)[0],
                {"goal": "bench", "files": [f"src/mod_{r.randrange(500)}.py"]}, r.choice(data.recent_session_ids))

    def raw_task(conn, p):
        params = raw_task_params(p)
        raw_write(conn, tasks.INSERT_SQL, params)
        return decode(inserted_row(params), tc, tj)

    def audit_sample(r):
        agent_id, task_id, _ = r.choice(data.recent_agents)
        operation = r.choice(MEMORY_OPERATIONS) if r.random() < 0.3 else None
        return (agent_id, task_id, {"tool": "edit", "duration_ms": r.randrange(9_000)}, operation,
                r.choice(data.memory_entry_ids) if operation else None)

    def raw_audit(conn, p):
        params = {"timestamp": _values.now(), "agent_id": p[0], "task_id": p[1],
                  "action_type": "memory_op" if p[3] else "tool_call", "action_data": dumps(p[2]),
                  "result": "ok", "memory_operation_type": p[3], "memory_namespace": "project-1" if p[3] else None,
                  "memory_entry_id": p[4]}
        return decode(raw_write(conn, audit._INSERT, params)[0], audit.COLUMNS, audit.JSON_COLUMNS)

    def checkpoint_sample(r):
        task_id = r.choice(data.recent_task_ids)
        return task_id, next(CHECKPOINT_ITERATIONS), {"messages": r.randrange(200), "plan": "continue"}, \
            data.task_session[task_id]

    def raw_checkpoint(conn, p):
        params = {"task_id": p[0], "iteration": p[1], "state": dumps(p[2]), "created_at": _values.now(),
                  "session_id": p[3]}
        return decode(raw_write(conn, checkpoints._INSERT, params)[0], checkpoints.COLUMNS, checkpoints.JSON_COLUMNS)

    def raw_metric(conn, p):
        params = {"timestamp": _values.now(), "metric_name": p[0], "metric_value": float(p[1]), "labels": dumps(p[2])}
        row = decode(raw_write(conn, metrics._INSERT, params)[0], metrics.COLUMNS, metrics.JSON_COLUMNS)
        row["metric_value"] = float(row["metric_value"])
        return row

    def raw_state(conn, p):
        now = _values.now()
        params = {"task_id": p[0], "key": p[1], "value": dumps(p[2]), "created_at": now, "updated_at": now}
        return decode(raw_write(conn, state._UPSERT, params)[0], state.COLUMNS, state.JSON_COLUMNS)

    # Private SQL constants on purpose: the raw side must send exactly the package's statements.
    return [
        Op("insert_task", "tasks.create: one task, own transaction", "write", task_sample,
           lambda c, p: tasks.create(c, p[0], priority=p[1], input_data=p[2], session_id=p[3]), raw_task),
        Op("insert_audit", "audit.record", "write", audit_sample,
           lambda c, p: audit.record(c, "memory_op" if p[3] else "tool_call", agent_id=p[0], task_id=p[1],
                                     action_data=p[2], result="ok", memory_operation_type=p[3],
                                     memory_namespace="project-1" if p[3] else None, memory_entry_id=p[4]),
           raw_audit),
        Op("insert_checkpoint", "checkpoints.save", "write", checkpoint_sample,
           lambda c, p: checkpoints.save(c, p[0], p[1], p[2], session_id=p[3]), raw_checkpoint),
        Op("insert_metric", "metrics.record", "write",
           lambda r: (r.choice(METRIC_NAMES), round(r.random() * 1000, 3), {"host": f"worker-{r.randrange(16)}"}),
           lambda c, p: metrics.record(c, p[0], p[1], labels=p[2]), raw_metric),
        Op("set_state", "state.set (upsert)", "write",
           lambda r: (r.choice(data.recent_task_ids), f"bench-{next(_STATE_KEYS) % 50}", {"n": r.randrange(99)}),
           lambda c, p: state.set(c, p[0], p[1], p[2]), raw_state),
    ]


def claim_params(**params) -> dict:
    """Return a claim's parameters as claim_next builds them: the time, and a new lease (os.urandom, as it does)."""
    return {"now": _values.now(), "lease": os.urandom(16).hex(), **params}


def inserted_row(params: dict) -> tuple:
    """Return the row a plain tasks.INSERT_SQL with `params` stored: the parameters and the columns' defaults.

    tasks.create builds the task it returns the same way instead of reading it back.
    """
    defaults = {"status": "pending", "result_data": None, "error_message": None, "retry_count": 0,
                "started_at": None, "completed_at": None, "last_updated_at": params["now"], "unmet_dependencies": 0,
                "lease": None}
    return tuple(params[c] if c in params else defaults[c] for c in tasks.COLUMNS)


def raw_task_params(p: tuple, now: str | None = None) -> dict:
    """Return the INSERT parameters of one sampled task (prompt, priority, input, session), as raw code would."""
    now = now or _values.now()
    # The raw side makes ids and timestamps with the package's helpers, so the
    # ratio isolates the package's own layers (checks, parameter dicts, transactions).
    return {"id": _values.new_id(), "prompt": p[0], "agent_type": "general", "priority": p[1],
            "input_data": dumps(p[2]), "max_retries": 3, "max_execution_timeout_seconds": 3600,
            "submitted_at": now, "now": now, "created_by": None, "parent_task_id": None,
            "dependencies": "[]", "session_id": p[3]}


def create_many(conn: sqlite3.Connection, batch: list[tuple]) -> None:
    """Insert sampled tasks (the insert_task op's parameters) in one call of tasks.create_many."""
    tasks.create_many(conn, [{"prompt": p[0], "priority": p[1], "input_data": p[2], "session_id": p[3]}
                             for p in batch])


def raw_executemany(conn: sqlite3.Connection, batch: list[tuple]) -> None:
    """Insert the same sampled tasks with one raw executemany, in one transaction, one timestamp for all."""
    now = _values.now()  # as create_many: one clock reading per call, not one per row
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(tasks.INSERT_SQL, (raw_task_params(p, now) for p in batch))  # no RETURNING: no rows to read
    conn.execute("COMMIT")
