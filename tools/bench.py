#!/usr/bin/env python3
"""Measure abathur_db against raw sqlite3 and write the milestone-1 performance baseline.

Run from the checkout root::

    python tools/bench.py [--scale tiny|small|large] [--seed N] [--json FILE] [--report FILE]
                          [--coverage FILE] [--dir DIR] [--keep] [--cache-size KIB] [--mmap-size BYTES]

The tool builds a seeded, realistic data set through the package's own schema,
then measures, each as median / p95 / p99: every SPEC §5 catalog query through
the package function that runs it, side by side with raw ``sqlite3`` running the
same SQL and doing the same work (rows to dicts, JSON decoded); single-row and
bulk task inserts; the write cost of the indexes and of the foreign keys;
``claim_next`` from one thread, ten threads and four processes; and ten threads
on a 90 % read / 10 % write mix. Package and raw calls alternate within one run,
so machine noise hits both sides alike. Every SPEC §6 bar is judged from these
figures; ``--json`` writes them all, ``--report`` renders the Markdown baseline.

Standard library only. ``--cache-size`` and ``--mmap-size`` apply a PRAGMA to
every connection the tool uses (package and raw alike): they exist to test
tuning ideas without touching the package.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gc
import itertools
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
# The checkout's package, never an installed copy: the numbers are about this code.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import abathur_db  # noqa: E402
from abathur_db import _values, agents, audit, catalog, checkpoints, metrics, sessions, state, tasks  # noqa: E402
from abathur_db.errors import AbathurDBError, BusyError  # noqa: E402
from abathur_db.pool import PRAGMAS  # noqa: E402

TOOL_VERSION = 1
TIMEOUT = 600  # seconds; only reached if a worker hangs
THREADS = 10
PROCESSES = 4
SPAN_DAYS = 30  # the data set covers the 30 days before the run
DAY_MS = 86_400_000
CLOCK = time.perf_counter_ns


# --------------------------------------------------------------------------- scales


@dataclass(frozen=True)
class Scale:
    """Sizes of one data set and how many samples each measurement takes."""

    name: str
    sessions: int
    tasks: int
    agents: int
    audit: int
    metrics: int
    memory_entries: int
    samples: int  # per side, for each catalog query and for single-row inserts
    bulk_rows: int  # rows per bulk transaction
    bulk_batches: int  # per side
    write_rows: int  # rows per transaction in the index and foreign-key cost phases
    write_rounds: int  # per side and table
    claims: int  # per side, claim_next from one thread
    claims_per_worker: int  # each of 10 threads, then each of 4 processes
    mixed_ops: int  # per thread and round of the 90/10 mix (2 rounds per side)


SCALES = {
    "tiny": Scale("tiny", 20, 2_000, 2_000, 10_000, 1_000, 100,
                  samples=40, bulk_rows=100, bulk_batches=3, write_rows=50, write_rounds=3,
                  claims=40, claims_per_worker=10, mixed_ops=40),
    "small": Scale("small", 100, 20_000, 20_000, 100_000, 10_000, 1_000,
                   samples=1_000, bulk_rows=1_000, bulk_batches=6, write_rows=200, write_rounds=10,
                   claims=1_000, claims_per_worker=100, mixed_ops=500),
    # SPEC §6 sizes: 200,000 tasks, 200,000 agents, 1,000,000 audit rows, 1,000 sessions.
    "large": Scale("large", 1_000, 200_000, 200_000, 1_000_000, 100_000, 10_000,
                   samples=2_000, bulk_rows=1_000, bulk_batches=10, write_rows=200, write_rounds=20,
                   claims=2_000, claims_per_worker=200, mixed_ops=1_500),
}


# --------------------------------------------------------------------------- statistics


def stats(samples_ns: list[int]) -> dict[str, Any]:
    """Return n, median, p95, p99, mean, min, max (µs) and ops/s of one list of durations in ns."""
    if not samples_ns:
        return {"n": 0, "median_us": None, "p95_us": None, "p99_us": None, "mean_us": None,
                "min_us": None, "max_us": None, "ops_per_s": None}
    us = [s / 1000 for s in samples_ns]
    if len(us) > 1:
        cuts = statistics.quantiles(us, n=100, method="inclusive")
        p95, p99 = cuts[94], cuts[98]
    else:
        p95 = p99 = us[0]
    total = sum(us)
    return {
        "n": len(us),
        "median_us": round(statistics.median(us), 2),
        "p95_us": round(p95, 2),
        "p99_us": round(p99, 2),
        "mean_us": round(total / len(us), 2),
        "min_us": round(min(us), 2),
        "max_us": round(max(us), 2),
        "ops_per_s": round(len(us) / (total / 1e6), 1) if total else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return numerator / denominator rounded to 3 places, or None when either is missing."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def compare(package_ns: list[int], raw_ns: list[int]) -> dict[str, Any]:
    """Return both sides' stats and the package/raw time ratios of their medians and p99s."""
    package, raw = stats(package_ns), stats(raw_ns)
    return {
        "package": package,
        "raw": raw,
        # > 1 means the package is slower; the bars compare medians, p99 is shown for context.
        "time_ratio": ratio(package["median_us"], raw["median_us"]),
        "p99_ratio": ratio(package["p99_us"], raw["p99_us"]),
        # < 1 means the package does fewer per second. From medians: a WAL checkpoint (one
        # commit in ~150 pays a few ms) lands on either side at random and would swamp a mean.
        "throughput_ratio": ratio(raw["median_us"], package["median_us"]),
    }


def paired(package: Callable[[Any], Any], raw: Callable[[Any], Any], params: list, warmup: int = 0
           ) -> tuple[list[int], list[int]]:
    """Time package(p) and raw(p) for every p, alternating which runs first; return both lists of ns.

    Running the pair back to back with the same parameter, first one side then the
    other, spreads cache warmth and machine noise evenly over both. Callers run both
    sides on one connection: in WAL mode a write through one connection empties the
    page cache of every other, which cost the side reading next ~70-100 µs per call
    at small scale when each side had its own connection.
    """
    for p in params[:warmup]:
        package(p)
        raw(p)
    package_ns, raw_ns = [], []
    # As timeit does: a collection in the middle of one call would land on one side only.
    collecting = gc.isenabled()
    gc.disable()
    for i, p in enumerate(params[warmup:]):
        if i % 2:
            t0 = CLOCK()
            raw(p)
            t1 = CLOCK()
            package(p)
            t2 = CLOCK()
            raw_ns.append(t1 - t0)
            package_ns.append(t2 - t1)
        else:
            t0 = CLOCK()
            package(p)
            t1 = CLOCK()
            raw(p)
            t2 = CLOCK()
            package_ns.append(t1 - t0)
            raw_ns.append(t2 - t1)
    if collecting:
        gc.enable()
    return package_ns, raw_ns


# --------------------------------------------------------------------------- connections and helpers

_started = time.monotonic()


def progress(message: str) -> None:
    """Print one progress line on stderr."""
    print(f"[bench {time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Tuning:
    """Optional PRAGMAs applied to every connection the tool uses, package and raw alike."""

    cache_size_kib: int | None = None
    mmap_size: int | None = None

    def apply(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """Apply the PRAGMAs to `conn` and return it."""
        # Integers from argparse only: PRAGMA takes no bound parameters.
        if self.cache_size_kib is not None:
            conn.execute(f"PRAGMA cache_size = -{int(self.cache_size_kib)}")
        if self.mmap_size is not None:
            conn.execute(f"PRAGMA mmap_size = {int(self.mmap_size)}").fetchall()
        return conn

    def describe(self) -> str:
        """Return the PRAGMAs as text ("package defaults" when none)."""
        parts = []
        if self.cache_size_kib is not None:
            parts.append(f"cache_size=-{self.cache_size_kib}")
        if self.mmap_size is not None:
            parts.append(f"mmap_size={self.mmap_size}")
        return ", ".join(parts) or "package defaults"


def raw_connect(path: str, tuning: Tuning, *, foreign_keys: bool = True) -> sqlite3.Connection:
    """Open a plain sqlite3 connection with the package's PRAGMA settings, as a careful raw user would."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    # The package's own table of settings, so raw and package always run alike.
    for name, value in PRAGMAS:
        if name == "foreign_keys":
            value = int(foreign_keys)
        conn.execute(f"PRAGMA {name} = {value}").fetchall()
    return tuning.apply(conn)


def raw_write(conn: sqlite3.Connection, sql: str, params: dict) -> list[tuple]:
    """Run one write in BEGIN IMMEDIATE … COMMIT on a raw connection; return its RETURNING rows."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(sql, params).fetchall()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return rows


def decode(row: tuple, columns: tuple[str, ...], json_columns: tuple[str, ...]) -> dict:
    """Turn one raw row into a dict with its JSON columns decoded (the raw side's own decoder)."""
    result = dict(zip(columns, row))
    for name in json_columns:
        text = result[name]
        if text is not None:
            result[name] = json.loads(text)
    return result


def dumps(value: Any) -> str:
    """Return `value` as compact JSON, with the same options the package uses."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def ts(ms: int) -> str:
    """Return epoch milliseconds as the package's timestamp text (checked against format_datetime)."""
    seconds, rest = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:03d}Z"


def _check_timestamp_format() -> None:
    import datetime as dt
    for ms in (0, 1_764_154_182_007, 1_799_999_999_999):
        moment = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).replace(microsecond=(ms % 1000) * 1000)
        if ts(ms) != _values.format_datetime(moment):  # pragma: no cover - guards the data set's format
            raise AssertionError(f"bench timestamps drifted from the package: {ts(ms)!r}")


def uuid7(ms: int, rng: random.Random) -> str:
    """Return a time-ordered id in the package's UUID version 7 layout, drawn from `rng`."""
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rng.getrandbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --------------------------------------------------------------------------- data set

WORDS = (
    "refactor the parser module add tests for edge cases summarise the findings in a short report "
    "review the pull request check the migration plan write documentation for the public api "
    "investigate the flaky test measure latency of the service design a schema for sessions "
    "update dependencies fix the memory leak in the worker pool translate error messages "
    "benchmark the queue compare two approaches and recommend one collect logs from the cluster"
).split()
AGENT_TYPES = ("general", "coder", "reviewer", "researcher", "tester")
MODELS = ("claude-sonnet", "claude-haiku", "claude-opus")
ACTIONS = ("tool_call", "llm_request", "file_write", "file_read", "state_change")
MEMORY_OPERATIONS = ("create", "update", "delete", "consolidate", "publish")
PRIORITY_WEIGHTS = (1, 1, 2, 3, 4, 10, 4, 3, 2, 1, 1)  # 0..10, mostly the default 5
METRIC_NAMES = ("task_latency_ms", "tokens_in", "tokens_out", "queue_depth", "cost_usd",
                "tool_calls", "retries", "agent_count", "memory_hits", "cache_ratio")

INSERT_SQL = {
    "sessions": "INSERT INTO sessions (id, app_name, user_id, project_id, status, events, state, metadata,"
                " created_at, last_update_time, terminated_at, archived_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "memory_entries": "INSERT INTO memory_entries (id, namespace, key, value, memory_type, version,"
                      " is_deleted, metadata, created_by, updated_by, created_at, updated_at)"
                      " VALUES (?, ?, ?, ?, ?, 1, 0, '{}', ?, ?, ?, ?)",
    "tasks": "INSERT INTO tasks (id, prompt, agent_type, priority, status, input_data, result_data,"
             " error_message, retry_count, max_retries, max_execution_timeout_seconds, submitted_at,"
             " started_at, completed_at, last_updated_at, created_by, parent_task_id, dependencies,"
             " session_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 3, 3600, ?, ?, ?, ?, ?, ?, ?, ?)",
    "agents": "INSERT INTO agents (id, name, specialization, task_id, state, model, spawned_at,"
              " terminated_at, resource_usage, session_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "audit": "INSERT INTO audit (timestamp, agent_id, task_id, action_type, action_data, result,"
             " memory_operation_type, memory_namespace, memory_entry_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "checkpoints": "INSERT INTO checkpoints (task_id, iteration, state, created_at, session_id)"
                   " VALUES (?, ?, ?, ?, ?)",
    "state": "INSERT INTO state (task_id, key, value, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
    "metrics": "INSERT INTO metrics (timestamp, metric_name, metric_value, labels) VALUES (?, ?, ?, ?)",
}


@dataclass
class Dataset:
    """The ids and times the measurements draw their parameters from."""

    now_ms: int
    start_ms: int
    session_ids: list[str] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)
    started_task_ids: list[str] = field(default_factory=list)  # tasks with agents, audit, checkpoints
    recent_task_ids: list[str] = field(default_factory=list)  # active work: the newest started tasks
    task_session: dict[str, str | None] = field(default_factory=dict)
    parent_ids: list[str] = field(default_factory=list)
    checkpoint_task_ids: list[str] = field(default_factory=list)
    state_pairs: list[tuple[str, str]] = field(default_factory=list)
    recent_agents: list[tuple[str, str, str | None]] = field(default_factory=list)  # (agent, task, session)
    recent_session_ids: list[str] = field(default_factory=list)  # sessions new work goes to
    recent_parent_ids: list[str] = field(default_factory=list)
    memory_entry_ids: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # Used while seeding: sessions by creation time, (task index, started, ended) of
    # started tasks, and agents by spawn time with their (agent, task, session).
    session_created: list[int] = field(default_factory=list)
    task_times: list[tuple[int, int, int]] = field(default_factory=list)
    agent_spawned: list[int] = field(default_factory=list)
    agent_owner: list[tuple[str, str, str | None]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    blocked_block: int = 0

    def window(self, rows: int, wanted: int, rng: random.Random) -> tuple[str, str]:
        """Return a random [since, until) that holds about `wanted` of `rows` spread over the span."""
        span = self.now_ms - self.start_ms
        width = max(1, span * wanted // max(rows, 1))
        since = rng.randrange(self.start_ms, max(self.start_ms + 1, self.now_ms - width))
        return ts(since), ts(since + width)


class _Pools:
    """Pre-rendered text and JSON values, so seeding a million rows spends little time in json.dumps."""

    def __init__(self, rng: random.Random) -> None:
        def sentence(low: int, high: int) -> str:
            return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))

        self.prompts = [sentence(15, 80) for _ in range(2_000)]
        self.inputs = [dumps({"goal": sentence(4, 12), "files": [f"src/mod_{rng.randrange(500)}.py"
                                                                 for _ in range(rng.randint(0, 4))],
                              "budget_tokens": rng.choice((4_000, 16_000, 64_000))}) for _ in range(1_000)]
        self.results = [dumps({"summary": sentence(8, 30), "tokens": rng.randrange(200, 40_000),
                               "files_changed": rng.randrange(0, 12)}) for _ in range(1_000)]
        self.action_data = [dumps({"tool": rng.choice(("bash", "read", "edit", "search", "web")),
                                   "args": {"path": f"src/mod_{rng.randrange(500)}.py"},
                                   "duration_ms": rng.randrange(1, 9_000)}) for _ in range(1_000)]
        self.checkpoint_states = [dumps({"messages": rng.randrange(1, 200), "plan": sentence(5, 25),
                                         "open_files": rng.randrange(0, 9)}) for _ in range(1_000)]
        self.usage = [dumps({"tokens_in": rng.randrange(1_000, 400_000), "tokens_out": rng.randrange(100, 60_000),
                             "cost_usd": round(rng.random() * 4, 4)}) for _ in range(500)]
        self.labels = [dumps({"agent_type": rng.choice(AGENT_TYPES), "host": f"worker-{rng.randrange(16)}"})
                       for _ in range(200)]
        self.memory_values = [dumps({"fact": sentence(5, 20), "confidence": round(rng.random(), 3)})
                              for _ in range(500)]


def build_dataset(conn: sqlite3.Connection, scale: Scale, seed: int, now_ms: int) -> Dataset:
    """Fill the database with a seeded, realistic data set; return what the measurements draw from.

    One transaction per table, raw executemany through the package's schema (its
    triggers, CHECKs and foreign keys all active). ~25 % of tasks are pending; some
    have dependencies, and a block of the most urgent pending tasks waits on
    unfinished work, so a claim must step over them.
    """
    rng = random.Random(seed)
    pools = _Pools(rng)
    data = Dataset(now_ms=now_ms, start_ms=now_ms - SPAN_DAYS * DAY_MS)
    # Seeding is not measured: a large cache makes a million-row transaction quicker.
    cache_before = conn.execute("PRAGMA cache_size").fetchone()[0]
    conn.execute("PRAGMA cache_size = -262144")
    try:
        for name, step in (("sessions", _seed_sessions), ("memory_entries", _seed_memory),
                           ("tasks", _seed_tasks), ("agents", _seed_agents), ("audit", _seed_audit),
                           ("checkpoints", _seed_checkpoints), ("state", _seed_state),
                           ("metrics", _seed_metrics)):
            began = time.monotonic()
            with abathur_db.transaction(conn):
                rows = step(conn, scale, data, rng, pools)
            data.counts[name] = rows
            data.seconds[name] = round(time.monotonic() - began, 2)
            progress(f"seeded {name}: {rows:,} rows in {data.seconds[name]:.1f}s")
    finally:
        conn.execute(f"PRAGMA cache_size = {int(cache_before)}")
    return data


def _insert(conn: sqlite3.Connection, table: str, rows) -> int:
    cursor = conn.executemany(INSERT_SQL[table], rows)
    return cursor.rowcount


def _seed_sessions(conn, scale, data, rng, pools) -> int:
    created = sorted(rng.randrange(data.start_ms - DAY_MS, data.now_ms - 3_600_000) for _ in range(scale.sessions))
    data.session_created = created
    rows = []
    for ms in created:
        sid = uuid7(ms, rng)
        data.session_ids.append(sid)
        status = rng.choices(("created", "active", "paused", "terminated", "archived"), (1, 5, 1, 2, 1))[0]
        updated = min(data.now_ms, ms + rng.randrange(1, 5 * DAY_MS))
        events = dumps([{"type": "message", "at": ts(ms + k * 1000)} for k in range(rng.randint(0, 3))])
        rows.append((sid, rng.choice(("abathur-cli", "abathur-api", "swarm-runner")),
                     f"user-{rng.randrange(max(1, scale.sessions // 5))}",
                     f"project-{rng.randrange(50)}" if rng.random() < 0.7 else None, status, events,
                     dumps({"step": rng.randrange(100)}), dumps({"client": "bench", "version": "1.0"}),
                     ts(ms), ts(updated), ts(updated) if status in ("terminated", "archived") else None,
                     ts(updated) if status == "archived" else None))
    return _insert(conn, "sessions", rows)


def _seed_memory(conn, scale, data, rng, pools) -> int:
    def rows():
        for i in range(1, scale.memory_entries + 1):
            ms = data.start_ms + (data.now_ms - data.start_ms) * i // (scale.memory_entries + 1)
            data.memory_entry_ids.append(i)
            yield (i, f"project-{rng.randrange(50)}", f"fact-{i}", rng.choice(pools.memory_values),
                   rng.choice(("semantic", "episodic", "procedural")), "agent", "agent", ts(ms), ts(ms))
    return _insert(conn, "memory_entries", rows())


def _seed_tasks(conn, scale, data, rng, pools) -> int:
    """Insert the tasks in submission order; dependencies and parents always point backwards.

    The dependency trigger fills task_dependencies and unmet_dependencies from the
    statuses of tasks already inserted, so the bookkeeping is exactly what the
    package itself would have written.
    """
    n = scale.tasks
    offsets = sorted(rng.randrange(0, data.now_ms - data.start_ms - 600_000) for _ in range(n))
    block = max(10, n // 200)  # the most urgent pending tasks, all blocked
    block_start = n // 10
    blockers = list(range(block_start - 5, block_start))
    running = set(rng.sample(range(int(n * 0.8), n), max(5, n // 200)))
    sessions_created = data.session_created
    data.blocked_block = block
    statuses: dict[str, str] = {}
    ids: list[str] = []
    planners: list[int] = []
    started: list[int] = []

    def rows():
        for i in range(n):
            ms = data.start_ms + offsets[i]
            tid = uuid7(ms, rng)
            ids.append(tid)
            data.task_ids.append(tid)
            # 85 % belong to a session opened before them, most often a recent one.
            k = bisect.bisect_left(sessions_created, ms)
            session = None
            if k and rng.random() < 0.85:
                session = data.session_ids[k - 1 - min(int(rng.expovariate(1 / 10)), k - 1)]
            data.task_session[tid] = session
            priority = rng.choices(range(11), PRIORITY_WEIGHTS)[0]
            status = rng.choices(("pending", "completed", "failed", "cancelled"), (25, 65, 6, 4))[0]
            dependencies: list[str] = []
            parent = None
            if planners and rng.random() < 0.2:
                parent = ids[planners[-1 - min(int(rng.expovariate(1 / 5)), len(planners) - 1)]]
            if rng.random() < 0.05:
                planners.append(i)
            if block_start <= i < block_start + block:
                # The urgent block: oldest priority-10 pending tasks, waiting on pending blockers.
                status, priority = "pending", 10
                dependencies = [ids[rng.choice(blockers)]]
            elif i in blockers:
                status, priority = "pending", 0
            elif i > 20 and rng.random() < 0.05:
                dependencies = [ids[j] for j in rng.sample(range(max(0, i - 200), i), rng.randint(1, 3))]
            if i < block_start and status == "pending" and priority == 10:
                priority = 9  # keep the blocked block the most urgent of all pending tasks
            if any(statuses[d] != "completed" for d in dependencies):
                status = "pending"  # nothing starts before its dependencies are done
            if i in running and status != "pending":
                status = "running"
            statuses[tid] = status
            started_ms = completed_ms = None
            updated_ms = ms
            if status == "running":
                # One running task in ten has stopped sending heartbeats (stale: timeout 3600 s).
                updated_ms = data.now_ms - (rng.randrange(4_000_000, 9_000_000) if rng.random() < 0.1
                                            else rng.randrange(1_000, 600_000))
                updated_ms = max(updated_ms, ms + 1_000)
                started_ms = max(ms, updated_ms - rng.randrange(0, 3_000_000))
            elif status != "pending" and not (status == "cancelled" and rng.random() < 0.5):
                started_ms = min(data.now_ms - 2, ms + rng.randrange(500, 120_000))
                completed_ms = min(data.now_ms - 1, started_ms + rng.randrange(10_000, 1_800_000))
                updated_ms = completed_ms
            elif status == "cancelled":
                completed_ms = updated_ms = min(data.now_ms - 1, ms + rng.randrange(1_000, 600_000))
            if started_ms is not None:
                started.append(i)
                data.task_times.append((i, started_ms, completed_ms or data.now_ms))
            yield (tid, rng.choice(pools.prompts), rng.choice(AGENT_TYPES), priority, status,
                   rng.choice(pools.inputs), rng.choice(pools.results) if status == "completed" else None,
                   "tool failed: exit status 1" if status == "failed" else None,
                   rng.randint(0, 3) if status == "failed" else 0,
                   ts(ms), started_ms and ts(started_ms), completed_ms and ts(completed_ms), ts(updated_ms),
                   rng.choice(("planner", "user:alice", "user:bob", None)), parent, dumps(dependencies), session)

    count = _insert(conn, "tasks", rows())
    parents = {row[0] for row in conn.execute(
        "SELECT DISTINCT parent_task_id FROM tasks WHERE parent_task_id IS NOT NULL")}
    data.parent_ids = [tid for tid in ids if tid in parents]
    data.recent_parent_ids = data.parent_ids[-max(5, len(data.parent_ids) // 20):]
    data.recent_session_ids = data.session_ids[-max(5, len(data.session_ids) // 20):]
    data.started_task_ids = [ids[i] for i in started]
    data.recent_task_ids = data.started_task_ids[-max(20, len(started) // 50):]
    return count


def _seed_agents(conn, scale, data, rng, pools) -> int:
    """Give every started task one agent, and some tasks more, up to the scale's agent count."""
    times = data.task_times
    plan = [(start + rng.randrange(0, 5_000), i, start, end) for i, start, end in times[:scale.agents]]
    for _ in range(scale.agents - len(plan)):
        i, start, end = rng.choice(times)
        plan.append((rng.randrange(start, max(start + 1, end)), i, start, end))
    plan.sort()
    spawned, owner = [], []
    rows = []
    for number, (ms, i, start, end) in enumerate(plan):
        ms = min(ms, data.now_ms - 1)
        task_id = data.task_ids[i]
        aid = uuid7(ms, rng)
        live = end >= data.now_ms
        agent_state = rng.choice(("busy", "idle")) if live else "terminated"
        specialization = rng.choice(AGENT_TYPES)
        session = data.task_session[task_id]
        spawned.append(ms)
        owner.append((aid, task_id, session))
        rows.append((aid, f"{specialization}-{number}", specialization, task_id, agent_state,
                     rng.choice(MODELS), ts(ms), None if live else ts(max(ms, min(end, data.now_ms - 1))),
                     None if live else rng.choice(pools.usage), session))
    data.agent_spawned = spawned
    data.agent_owner = owner
    data.recent_agents = owner[-max(20, len(owner) // 50):]
    return _insert(conn, "agents", rows)


def _seed_audit(conn, scale, data, rng, pools) -> int:
    """Append audit rows in time order, each by an agent already spawned (5 % by the system)."""
    spawned, owner = data.agent_spawned, data.agent_owner
    first = spawned[0] if spawned else data.start_ms
    offsets = sorted(rng.randrange(0, data.now_ms - first) for _ in range(scale.audit))
    memory_ids = data.memory_entry_ids

    def rows():
        for offset in offsets:
            ms = first + offset
            k = bisect.bisect_right(spawned, ms)
            agent_id = task_id = None
            if k and rng.random() > 0.05:
                agent_id, task_id, _ = owner[k - 1 - min(int(rng.expovariate(1 / 30)), k - 1)]
            if rng.random() < 0.3:
                operation = rng.choices(MEMORY_OPERATIONS, (3, 4, 0.5, 1.5, 1))[0]
                yield (ts(ms), agent_id, task_id, "memory_op", rng.choice(pools.action_data), "ok", operation,
                       f"project-{rng.randrange(50)}", rng.choice(memory_ids) if rng.random() < 0.9 else None)
            else:
                yield (ts(ms), agent_id, task_id, rng.choice(ACTIONS), rng.choice(pools.action_data),
                       "ok" if rng.random() < 0.95 else "error: timeout", None, None, None)

    return _insert(conn, "audit", rows())


def _seed_checkpoints(conn, scale, data, rng, pools) -> int:
    """Save 1 to 5 checkpoints (several iterations) for every started task."""
    times = data.task_times

    def rows():
        for i, start, end in times:
            task_id = data.task_ids[i]
            data.checkpoint_task_ids.append(task_id)
            ms = start
            for iteration in range(rng.randint(1, 5)):
                ms = min(data.now_ms - 1, ms + rng.randrange(5_000, 120_000))
                yield (task_id, iteration, rng.choice(pools.checkpoint_states), ts(ms), data.task_session[task_id])

    return _insert(conn, "checkpoints", rows())


def _seed_state(conn, scale, data, rng, pools) -> int:
    """Store 1 to 3 state keys for three started tasks in ten."""
    def rows():
        for task_id in data.started_task_ids:
            if rng.random() < 0.3:
                for key in rng.sample(("progress", "cursor", "notes"), rng.randint(1, 3)):
                    data.state_pairs.append((task_id, key))
                    moment = ts(data.now_ms - rng.randrange(1, SPAN_DAYS * DAY_MS))
                    yield (task_id, key, dumps({"value": rng.randrange(1000)}), moment, moment)

    return _insert(conn, "state", rows())


def _seed_metrics(conn, scale, data, rng, pools) -> int:
    """Record metrics over the whole span, in time order."""
    offsets = sorted(rng.randrange(0, data.now_ms - data.start_ms) for _ in range(scale.metrics))

    def rows():
        for offset in offsets:
            yield (ts(data.start_ms + offset), rng.choice(METRIC_NAMES), round(rng.random() * 1000, 3),
                   rng.choice(pools.labels))

    return _insert(conn, "metrics", rows())


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Op:
    """One measured operation: the package call and the raw sqlite3 code doing the same work."""

    name: str
    title: str
    kind: str  # "read" or "write"
    sample: Callable[[random.Random], Any]  # draws one realistic parameter from the data set
    package: Callable[[sqlite3.Connection, Any], Any]
    raw: Callable[[sqlite3.Connection, Any], Any]
    sql_params: Callable[[Any], dict] | None = None  # the bound parameters (for EXPLAIN QUERY PLAN)


_CHECKPOINT_ITERATIONS = itertools.count(1_000_000)  # iterations no seeded checkpoint uses
_STATE_KEYS = itertools.count()


def build_ops(data: Dataset, limit: int = 100) -> dict[str, Op]:
    """Return every measured operation by name: the §5 catalog queries, then the extra writes.

    List queries ask for `limit` rows (the package's default, 100, unless told
    otherwise); time ranges are drawn to hold about that many rows.
    """
    sql = {entry.id: entry.sql for entry in catalog.CATALOG}
    now = ts(data.now_ms)  # requeue_stale "now": nothing seeded is stale after the first call
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
        ops.append(Op(cid, title, "read", sample, package, raw, sql_params))

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
                  lambda c, p: [decode(row, tc, tj) for row in raw_write(c, sql["T2"], {"now": _values.now()})],
                  lambda p: {"now": now}))
    read("T3", "tasks by status, most urgent first",
         lambda r: r.choices(("pending", "running", "failed"), (6, 2, 2))[0],
         lambda c, p: tasks.list(c, status=p, limit=limit), lambda p: {"status": p, "limit": limit}, tc, tj)
    read("T4", "tasks of a session, newest first", lambda r: r.choice(data.session_ids),
         lambda c, p: tasks.list(c, session_id=p, limit=limit), lambda p: {"session_id": p, "limit": limit}, tc, tj)
    read("T5", "tasks submitted in a time range", lambda r: data.window(n_tasks, limit, r),
         lambda c, p: tasks.list(c, submitted_since=p[0], submitted_until=p[1], limit=limit),
         lambda p: {"since": p[0], "until": p[1], "limit": limit}, tc, tj)
    read("T6", "children of a parent task", lambda r: r.choice(data.parent_ids),
         lambda c, p: tasks.list(c, parent_task_id=p, limit=limit),
         lambda p: {"parent_task_id": p, "limit": limit}, tc, tj)
    ops.append(Op("T7", "stale running tasks (requeue_stale)", "write", lambda r: None,
                  lambda c, p: tasks.requeue_stale(c, now=now),
                  lambda c, p: [decode(row, tc, tj) for row in raw_write(c, sql["T7"], {"now": now})],
                  lambda p: {"now": now}))

    def raw_t8(conn, p):
        row = conn.execute(sql["T8"], {"id": p}).fetchone()
        task = decode(row[:len(tc)], tc, tj)
        rest = row[len(tc):]
        task["session"] = None if rest[0] is None else decode(rest, sc, sj)
        return task

    ops.append(Op("T8", "task by id with its session", "read", lambda r: r.choice(data.task_ids),
                  tasks.get_with_session, raw_t8, lambda p: {"id": p}))
    read("A1", "agents of a task", lambda r: r.choice(data.started_task_ids),
         lambda c, p: agents.list(c, task_id=p, limit=limit), lambda p: {"task_id": p, "limit": limit}, ac, aj)
    read("A2", "agents of a session, newest first", lambda r: r.choice(data.session_ids),
         lambda c, p: agents.list(c, session_id=p, limit=limit), lambda p: {"session_id": p, "limit": limit}, ac, aj)
    read("A3", "agents spawned in a time range", lambda r: data.window(n_agents, limit, r),
         lambda c, p: agents.list(c, spawned_since=p[0], spawned_until=p[1], limit=limit),
         lambda p: {"since": p[0], "until": p[1], "limit": limit}, ac, aj)
    read("U1", "audit of a task, newest first", lambda r: r.choice(data.started_task_ids),
         lambda c, p: audit.list(c, task_id=p, limit=limit),
         lambda p: {"task_id": p, "since": "", "limit": limit}, uc, uj)
    read("U2", "latest audit rows", lambda r: None,
         lambda c, p: audit.list(c, limit=limit), lambda p: {"since": "", "limit": limit}, uc, uj)
    read("U3", "audit of one memory operation type since a time",
         lambda r: (r.choice(MEMORY_OPERATIONS), ts(data.now_ms - r.randrange(3_600_000, 7 * DAY_MS))),
         lambda c, p: audit.list(c, memory_operation_type=p[0], since=p[1], limit=limit),
         lambda p: {"memory_operation_type": p[0], "since": p[1], "limit": limit}, uc, uj)
    read("U4", "audit of a memory entry", lambda r: r.choice(data.memory_entry_ids),
         lambda c, p: audit.list(c, memory_entry_id=p, limit=limit),
         lambda p: {"memory_entry_id": p, "since": "", "limit": limit}, uc, uj)
    read("C1", "latest checkpoint of a task", lambda r: r.choice(data.checkpoint_task_ids),
         checkpoints.load, lambda p: {"task_id": p}, cc, cj, one=True)
    read("C2", "checkpoints of a session", lambda r: r.choice(data.session_ids),
         lambda c, p: checkpoints.list(c, session_id=p, limit=limit),
         lambda p: {"session_id": p, "limit": limit}, cc, cj)
    read("C3", "checkpoints created in a time range", lambda r: data.window(n_checkpoints, limit, r),
         lambda c, p: checkpoints.list(c, created_since=p[0], created_until=p[1], limit=limit),
         lambda p: {"since": p[0], "until": p[1], "limit": limit}, cc, cj)
    read("M1", "metrics in a time range", lambda r: data.window(n_metrics, limit, r),
         lambda c, p: metrics.query(c, since=p[0], until=p[1]),
         lambda p: {"since": p[0], "until": p[1], "limit": -1}, mc, mj)
    read("M2", "one metric in a time range",
         lambda r: (r.choice(METRIC_NAMES), *data.window(n_metrics, limit * len(METRIC_NAMES), r)),
         lambda c, p: metrics.query(c, name=p[0], since=p[1], until=p[2]),
         lambda p: {"metric_name": p[0], "since": p[1], "until": p[2], "limit": -1}, mc, mj)
    read("S1", "session by id", lambda r: r.choice(data.session_ids),
         sessions.get, lambda p: {"id": p}, sc, sj, one=True)

    def raw_k1(conn, p):
        row = conn.execute(sql["K1"], {"task_id": p[0], "key": p[1]}).fetchone()
        return None if row is None else json.loads(row[0])

    ops.append(Op("K1", "state value by task and key", "read", lambda r: r.choice(data.state_pairs),
                  lambda c, p: state.get(c, p[0], p[1]), raw_k1, lambda p: {"task_id": p[0], "key": p[1]}))

    ops.extend(_write_ops(data))
    return {op.name: op for op in ops}


def _write_ops(data: Dataset) -> list[Op]:
    """Return the writes of the insert and mixed phases (package call and raw equivalent)."""
    tc, tj = tasks.COLUMNS, tasks.JSON_COLUMNS

    def task_sample(r):
        return (" ".join(r.choices(WORDS, k=r.randint(15, 80))), r.choices(range(11), PRIORITY_WEIGHTS)[0],
                {"goal": "bench", "files": [f"src/mod_{r.randrange(500)}.py"]}, r.choice(data.recent_session_ids))

    def raw_task(conn, p):
        return decode(raw_write(conn, TASK_INSERT_RETURNING, raw_task_params(p))[0], tc, tj)

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
        return task_id, next(_CHECKPOINT_ITERATIONS), {"messages": r.randrange(200), "plan": "continue"}, \
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


TASK_INSERT_RETURNING = tasks.INSERT_SQL + " RETURNING " + ", ".join(tasks.COLUMNS)


def raw_task_params(p: tuple) -> dict:
    """Return the INSERT parameters of one sampled task (prompt, priority, input, session), as raw code would."""
    now = _values.now()
    # The raw side makes ids and timestamps with the package's helpers, so the
    # ratio isolates the package's own layers (checks, parameter dicts, transactions).
    return {"id": _values.new_id(), "prompt": p[0], "agent_type": "general", "priority": p[1],
            "input_data": dumps(p[2]), "max_retries": 3, "max_execution_timeout_seconds": 3600,
            "submitted_at": now, "now": now, "created_by": None, "parent_task_id": None,
            "dependencies": "[]", "session_id": p[3]}


def restore_claimed(conn: sqlite3.Connection, data: Dataset) -> int:
    """Put tasks claimed during the run back to pending, so every phase sees the same queue."""
    # Seeded running tasks started before the run; only the bench's own claims are later.
    with abathur_db.transaction(conn):
        return conn.execute(
            "UPDATE tasks SET status = 'pending', started_at = NULL, last_updated_at = submitted_at"
            " WHERE status = 'running' AND started_at > :now", {"now": ts(data.now_ms)}).rowcount


# --------------------------------------------------------------------------- phases


def phase_catalog(conn, ops, data, scale, rng) -> dict:
    """Time every §5 catalog query through its package function and through raw sqlite3, interleaved."""
    results = {}
    for entry in catalog.CATALOG:
        op = ops.get(entry.id)
        if op is None:  # a catalog entry this tool does not know yet: reported, not hidden
            results[entry.id] = {"title": entry.title, "kind": None, "measured": False}
            continue
        params = [op.sample(rng) for _ in range(scale.samples + 20)]
        gc.collect()
        package_ns, raw_ns = paired(lambda p: op.package(conn, p), lambda p: op.raw(conn, p), params, warmup=20)
        results[entry.id] = {"title": entry.title, "kind": op.kind, "measured": True,
                             **compare(package_ns, raw_ns)}
        if entry.id == "T2":
            restore_claimed(conn, data)
    return results


def phase_single_insert(conn, ops, data, scale, rng) -> dict:
    """Time single-row task inserts, each in its own transaction: tasks.create vs raw BEGIN/INSERT/COMMIT."""
    op = ops["insert_task"]
    params = [op.sample(rng) for _ in range(scale.samples + 20)]
    gc.collect()
    package_ns, raw_ns = paired(lambda p: op.package(conn, p), lambda p: op.raw(conn, p), params, warmup=20)
    return compare(package_ns, raw_ns)


def phase_bulk_insert(conn, ops, data, scale, rng) -> dict:
    """Time bulk task inserts in one transaction: tasks.create_many vs raw executemany."""
    op = ops["insert_task"]
    insert = tasks.INSERT_SQL  # executemany returns no rows: the plain INSERT

    def package_batch(batch):
        tasks.create_many(conn, [{"prompt": p[0], "priority": p[1], "input_data": p[2], "session_id": p[3]}
                                 for p in batch])

    def raw_batch(batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, (raw_task_params(p) for p in batch))
        conn.execute("COMMIT")

    batches = [[op.sample(rng) for _ in range(scale.bulk_rows)] for _ in range(scale.bulk_batches + 1)]
    gc.collect()
    package_ns, raw_ns = paired(package_batch, raw_batch, batches, warmup=1)
    rows = scale.bulk_rows
    result = {"rows_per_batch": rows, **compare(package_ns, raw_ns)}
    result["package_rows_per_s"] = round(rows * 1e6 / result["package"]["median_us"], 1)
    result["raw_rows_per_s"] = round(rows * 1e6 / result["raw"]["median_us"], 1)
    return result


WRITE_COST_TABLES = ("tasks", "agents", "audit", "checkpoints", "metrics")


def fresh_rows(table: str, count: int, data: Dataset, rng: random.Random) -> list[tuple]:
    """Return `count` new rows for `table` shaped like the live workload (recent tasks and agents)."""
    now = int(time.time() * 1000)
    rows = []
    for k in range(count):
        ms = now + k
        if table == "tasks":
            parent = rng.choice(data.recent_parent_ids) if data.recent_parent_ids and rng.random() < 0.2 else None
            rows.append((uuid7(ms, rng), "a new task " + " ".join(rng.choices(WORDS, k=30)), rng.choice(AGENT_TYPES),
                         rng.randint(0, 10), "pending", '{"goal":"bench"}', None, None, 0, ts(ms), None, None,
                         ts(ms), "planner", parent, "[]",
                         rng.choice(data.recent_session_ids) if rng.random() < 0.85 else None))
        elif table == "agents":
            task_id = rng.choice(data.recent_task_ids)
            rows.append((uuid7(ms, rng), f"coder-b{k}", "coder", task_id, "spawning", MODELS[0], ts(ms), None,
                         None, data.task_session[task_id]))
        elif table == "audit":
            agent_id, task_id, _ = rng.choice(data.recent_agents)
            memory = rng.random() < 0.3
            rows.append((ts(ms), agent_id, task_id, "memory_op" if memory else "tool_call",
                         '{"tool":"edit","duration_ms":120}', "ok", rng.choice(MEMORY_OPERATIONS) if memory else None,
                         "project-1" if memory else None, rng.choice(data.memory_entry_ids) if memory else None))
        elif table == "checkpoints":
            task_id = rng.choice(data.recent_task_ids)
            rows.append((task_id, next(_CHECKPOINT_ITERATIONS), '{"messages":12,"plan":"continue"}', ts(ms),
                         data.task_session[task_id]))
        elif table == "metrics":
            rows.append((ts(ms), rng.choice(METRIC_NAMES), round(rng.random() * 1000, 3), '{"host":"worker-1"}'))
    return rows


SINGLE_ROW_BLOCK = 20  # single-row transactions run in blocks, so a switch of side costs one sample


def _alternate_inserts(conn_a, conn_b, table, data, scale, rng, *, same_rows: bool, per_txn: int
                       ) -> tuple[list[int], list[int]]:
    """Insert fresh rows into `table` through conn_a and conn_b in alternate blocks; return per-row ns.

    With `per_txn` > 1 each block is one transaction of that many rows (executemany);
    with 1, each row is its own BEGIN IMMEDIATE … COMMIT. The first block of each side
    only warms its cache.
    """
    sql = INSERT_SQL[table]

    def run(conn, rows, out):
        for first in range(0, len(rows), per_txn):
            chunk = rows[first:first + per_txn]
            t0 = CLOCK()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, chunk)
            conn.execute("COMMIT")
            out.append((CLOCK() - t0) // len(chunk))

    block = scale.write_rows if per_txn > 1 else SINGLE_ROW_BLOCK
    rounds = scale.write_rounds if per_txn > 1 else scale.write_rounds * scale.write_rows // SINGLE_ROW_BLOCK
    a_ns: list[int] = []
    b_ns: list[int] = []
    for number in range(rounds + 1):
        rows_a = fresh_rows(table, block, data, rng)
        rows_b = rows_a if same_rows else fresh_rows(table, block, data, rng)
        out_a, out_b = ([], []) if number == 0 else (a_ns, b_ns)
        if number % 2:
            run(conn_b, rows_b, out_b)
            run(conn_a, rows_a, out_a)
        else:
            run(conn_a, rows_a, out_a)
            run(conn_b, rows_b, out_b)
    return a_ns, b_ns


def _write_cost(conn_a, conn_b, tables, a: str, b: str, data, scale, rng, *, same_rows: bool) -> dict:
    """Compare per-row insert cost through two setups, in batches and as single-row commits, per table."""
    result: dict[str, Any] = {"tables": {}}
    for table in tables:
        gc.collect()
        row = {}
        for mode, per_txn in (("batch", scale.write_rows), ("single", 1)):
            a_ns, b_ns = _alternate_inserts(conn_a, conn_b, table, data, scale, rng, same_rows=same_rows,
                                            per_txn=per_txn)
            sa, sb = stats(a_ns), stats(b_ns)
            row[mode] = {f"{a}_us_per_row": sa["median_us"], f"{b}_us_per_row": sb["median_us"],
                         "ratio": ratio(sa["median_us"], sb["median_us"]), "samples": sa["n"]}
        result["tables"][table] = row
    for mode in ("batch", "single"):
        rows = [t[mode] for t in result["tables"].values()]
        result[f"{mode}_all_tables_ratio"] = ratio(sum(r[f"{a}_us_per_row"] for r in rows),
                                                   sum(r[f"{b}_us_per_row"] for r in rows))
        result[f"{mode}_worst_table"] = max(result["tables"], key=lambda t: result["tables"][t][mode]["ratio"] or 0)
    return result


PACKAGE_INSERTS = {"tasks": "insert_task", "audit": "insert_audit", "checkpoints": "insert_checkpoint",
                   "metrics": "insert_metric"}


def _alternate_package_inserts(conn_a, conn_b, op: Op, scale, rng) -> tuple[list[int], list[int]]:
    """Call the package's insert function on conn_a and conn_b in alternate blocks; return ns per call."""
    a_ns: list[int] = []
    b_ns: list[int] = []
    rounds = scale.write_rounds * scale.write_rows // SINGLE_ROW_BLOCK
    for number in range(rounds + 1):
        params = [op.sample(rng) for _ in range(SINGLE_ROW_BLOCK)]
        sides = ((conn_a, [] if number == 0 else a_ns), (conn_b, [] if number == 0 else b_ns))
        for conn, out in (sides if number % 2 == 0 else sides[::-1]):
            for p in params:
                t0 = CLOCK()
                op.package(conn, p)
                out.append(CLOCK() - t0)
    return a_ns, b_ns


def phase_index_cost(path, workdir, ops, data, scale, rng, tuning) -> dict:
    """Compare inserts into the full schema with a copy that keeps only key and UNIQUE indexes.

    The verdict uses raw inserts (the indexes' own cost); the same comparison through
    the package's insert functions is recorded beside it, for context.
    """
    full = raw_connect(path, tuning)
    copy_path = os.path.join(workdir, "keys_only.db")
    # The online backup API copies one consistent snapshot, whatever the WAL holds.
    target = sqlite3.connect(copy_path)
    full.backup(target)
    target.close()
    keys_only = raw_connect(copy_path, tuning)
    # Keep what enforces a rule (primary keys, UNIQUE) and the triggers; drop every other index.
    dropped = []
    for (name, table) in keys_only.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"
    ).fetchall():
        unique = next(row[2] for row in keys_only.execute(f"PRAGMA index_list({table})") if row[1] == name)
        if not unique:
            dropped.append(name)
    for name in dropped:
        keys_only.execute(f"DROP INDEX {name}")  # names read from sqlite_master, not from input
    result = {"dropped_indexes": dropped,
              **_write_cost(full, keys_only, WRITE_COST_TABLES, "all_indexes", "keys_only", data, scale, rng,
                            same_rows=True)}
    for table, name in PACKAGE_INSERTS.items():
        gc.collect()
        a_ns, b_ns = _alternate_package_inserts(full, keys_only, ops[name], scale, rng)
        sa, sb = stats(a_ns), stats(b_ns)
        result["tables"][table]["package"] = {"function": ops[name].title, "all_indexes_us_per_row": sa["median_us"],
                                              "keys_only_us_per_row": sb["median_us"],
                                              "ratio": ratio(sa["median_us"], sb["median_us"]), "samples": sa["n"]}
    full.close()
    keys_only.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(copy_path + suffix):
            os.remove(copy_path + suffix)
    return result


def phase_fk_cost(path, data, scale, rng, tuning) -> dict:
    """Compare the same inserts on one database with foreign_keys ON and OFF."""
    on, off = raw_connect(path, tuning), raw_connect(path, tuning, foreign_keys=False)
    # metrics has no foreign key, so it is left out.
    result = _write_cost(on, off, ("tasks", "agents", "audit", "checkpoints"), "fk_on", "fk_off", data, scale, rng,
                         same_rows=False)
    on.close()
    off.close()
    return result


def phase_claim_one_thread(conn, ops, data, scale) -> dict:
    """Compare claim_next with a raw BEGIN IMMEDIATE; UPDATE … RETURNING; COMMIT loop, in alternate batches."""
    op = ops["T2"]
    size = min(50, scale.claims)
    batches = max(2, scale.claims // size)
    batches += batches % 2  # each side leads equally often
    for _ in range(10):  # warm both code paths and the cache; not counted
        op.package(conn, None)
        op.raw(conn, None)
    package_ns: list[int] = []
    raw_ns: list[int] = []
    sides = ((package_ns, lambda: op.package(conn, None)), (raw_ns, lambda: op.raw(conn, None)))
    claimed = 0
    for number in range(batches):
        for times, call in (sides if number % 2 == 0 else sides[::-1]):
            for _ in range(size):
                t0 = CLOCK()
                got = call()
                times.append(CLOCK() - t0)
                claimed += bool(got)
    restore_claimed(conn, data)
    result = compare(package_ns, raw_ns)
    result["claims"] = claimed
    return result


def _claim_loop(conn, count: int) -> dict:
    """Claim `count` tasks on `conn`; return the ids, lock errors, empty claims and latencies."""
    ids, latencies, locked, empty, other = [], [], 0, 0, []
    for _ in range(count):
        t0 = CLOCK()
        try:
            task = tasks.claim_next(conn)
        except BusyError:
            locked += 1
            continue
        except sqlite3.OperationalError as exc:  # a raw "database is locked" would land here
            if "locked" in str(exc):
                locked += 1
            else:
                other.append(repr(exc))
            continue
        latencies.append(CLOCK() - t0)
        if task is None:
            empty += 1
        else:
            ids.append(task["id"])
    return {"ids": ids, "locked": locked, "empty": empty, "errors": other, "latencies": latencies}


def _claim_summary(results: list[dict], wall_ns: int, workers: int) -> dict:
    ids = [i for r in results for i in r["ids"]]
    latencies = [ns for r in results for ns in r["latencies"]]
    return {
        "workers": workers,
        "claims": len(ids),
        "duplicates": len(ids) - len(set(ids)),
        "lock_errors": sum(r["locked"] for r in results),
        "other_errors": sum(len(r["errors"]) for r in results),
        "empty_claims": sum(r["empty"] for r in results),
        "claims_per_s": round(len(ids) / (wall_ns / 1e9), 1) if wall_ns else None,
        "latency": stats(latencies),
    }


def phase_claim_threads(pool, data, scale, tuning) -> dict:
    """Claim from 10 threads at once, each on its own connection; count duplicates and lock errors."""
    start = threading.Barrier(THREADS + 1)
    results: list[dict] = [{} for _ in range(THREADS)]

    def worker(k):
        conn = tuning.apply(pool.connection())
        start.wait(TIMEOUT)
        results[k] = _claim_loop(conn, scale.claims_per_worker)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    start.wait(TIMEOUT)
    t0 = CLOCK()
    for t in threads:
        t.join(TIMEOUT)
    wall = CLOCK() - t0
    restore_claimed(pool.connection(), data)
    return _claim_summary(results, wall, THREADS)


def _claim_in_child(path: str, count: int, tuning: Tuning, barrier, queue) -> None:
    """Open the database in this process, wait for the others, claim `count` tasks, report back."""
    try:
        with abathur_db.open(path) as pool:
            conn = tuning.apply(pool.connection())
            barrier.wait(TIMEOUT)
            queue.put(_claim_loop(conn, count))
    except BaseException as exc:  # reported to the parent rather than lost in a child's stderr
        queue.put({"ids": [], "locked": 0, "empty": 0, "errors": [repr(exc)], "latencies": []})
        raise


def phase_claim_processes(pool, path, data, scale, tuning) -> dict:
    """Claim from 4 processes at once, each with its own pool; count duplicates and lock errors."""
    context = multiprocessing.get_context("spawn")  # no inherited connections, as workers really start
    barrier = context.Barrier(PROCESSES + 1)
    queue = context.Queue()
    children = [context.Process(target=_claim_in_child,
                                args=(path, scale.claims_per_worker, tuning, barrier, queue))
                for _ in range(PROCESSES)]
    for child in children:
        child.start()
    barrier.wait(TIMEOUT)
    t0 = CLOCK()
    results = [queue.get(timeout=TIMEOUT) for _ in children]
    wall = CLOCK() - t0
    for child in children:
        child.join(TIMEOUT)
    restore_claimed(pool.connection(), data)
    return _claim_summary(results, wall, PROCESSES)


MIXED_WRITES = ("T2", "T7", "insert_task", "insert_audit", "insert_checkpoint", "insert_metric", "set_state")


def phase_mixed(pool, path, ops, data, scale, seed, tuning) -> dict:
    """Run 10 threads on 90 % catalog reads / 10 % writes; package and raw rounds alternate."""
    reads = [op for op in ops.values() if op.kind == "read"]
    writes = [ops[name] for name in MIXED_WRITES]
    rounds = ("package", "raw", "package", "raw")
    per_side: dict[str, dict[str, list[int]]] = {"package": collections.defaultdict(list),
                                                 "raw": collections.defaultdict(list)}
    walls = {"package": 0, "raw": 0}
    errors = {"package": 0, "raw": 0}
    for number, side in enumerate(rounds):
        plans = []
        for k in range(THREADS):
            rng = random.Random(f"{seed}-mixed-{number}-{k}")
            plan = []
            for _ in range(scale.mixed_ops):
                op = rng.choice(reads) if rng.random() < 0.9 else rng.choice(writes)
                plan.append((op, op.sample(rng)))
            plans.append(plan)
        start = threading.Barrier(THREADS + 1)
        samples: list[list[tuple[str, str, int]]] = [[] for _ in range(THREADS)]
        failures = [0] * THREADS

        def worker(k, side=side, plans=plans, start=start, samples=samples, failures=failures):
            conn = tuning.apply(pool.connection()) if side == "package" else raw_connect(path, tuning)
            mine = samples[k]
            start.wait(TIMEOUT)
            for op, p in plans[k]:
                call = op.package if side == "package" else op.raw
                t0 = CLOCK()
                try:
                    call(conn, p)
                except (AbathurDBError, sqlite3.Error):
                    failures[k] += 1
                    continue
                mine.append((op.name, op.kind, CLOCK() - t0))
            if side == "raw":
                conn.close()

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        gc.collect()
        start.wait(TIMEOUT)
        t0 = CLOCK()
        for t in threads:
            t.join(TIMEOUT)
        walls[side] += CLOCK() - t0
        errors[side] += sum(failures)
        for mine in samples:
            for name, kind, ns in mine:
                per_side[side][kind].append(ns)
                per_side[side]["op:" + name].append(ns)
        restore_claimed(pool.connection(), data)
        progress(f"  mixed round {number + 1}/{len(rounds)} ({side}) done")
    result = {"threads": THREADS, "ops_per_thread_per_round": scale.mixed_ops, "rounds_per_side": 2}
    for side in ("package", "raw"):
        lists = per_side[side]
        count = len(lists["read"]) + len(lists["write"])
        result[side] = {
            "read": stats(lists["read"]),
            "write": stats(lists["write"]),
            "errors": errors[side],
            "ops_per_s": round(count / (walls[side] / 1e9), 1) if walls[side] else None,
            "per_op": {name[3:]: stats(values) for name, values in sorted(lists.items()) if name.startswith("op:")},
        }
    result["read_p99_ratio"] = ratio(result["package"]["read"]["p99_us"], result["raw"]["read"]["p99_us"])
    result["write_p99_ratio"] = ratio(result["package"]["write"]["p99_us"], result["raw"]["write"]["p99_us"])
    return result


def phase_plans(conn, ops, rng) -> dict:
    """Check every catalog query's plan: its indexes used, no full scan, no temp B-tree for ORDER BY.

    The tool's own check plans each query with parameters drawn from the data set.
    When abathur_db.validation offers check_catalog(), its verdicts are recorded too
    and give the index usage rate (the package's own definition of a good plan).
    """
    queries = {}
    for entry in catalog.CATALOG:
        op = ops.get(entry.id)
        params = op.sql_params(op.sample(rng)) if op and op.sql_params else entry.params
        lines = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + entry.sql, params)]
        plan = " | ".join(lines)
        missing = [name for name in entry.indexes if not re.search(rf"\b{re.escape(name)}\b", plan)]
        # SPEC §5: no full SCAN (SQLite 3.36+ prints "SCAN x"); a query stopping after LIMIT
        # rows may walk its index in order ("SCAN t USING INDEX i") when the catalog says so.
        full_scans = [line for line in lines if line.startswith("SCAN ")
                      and not (entry.ordered_walk and " USING " in line)]
        temp = [line for line in lines if "USE TEMP B-TREE" in line]
        queries[entry.id] = {"plan": plan, "indexes": list(entry.indexes), "missing_indexes": missing,
                             "uses_index": not missing, "full_scans": full_scans, "temp_btree": temp,
                             "ok": not missing and not full_scans and not temp}
    checks = _catalog_checks(conn)
    if checks is not None:
        for cid, check in checks.items():
            if cid in queries:
                queries[cid]["check_catalog"] = check
        uses = [not any(p.startswith("does not use") for p in c["problems"]) for c in checks.values()]
        source = "abathur_db.validation.check_catalog()"
    else:
        uses = [q["uses_index"] for q in queries.values()]
        source = "tools/bench.py EXPLAIN QUERY PLAN"
    return {"source": source, "queries": queries,
            "index_usage_rate_pct": round(100 * sum(uses) / len(uses), 1) if uses else None,
            "all_ok": all(q["ok"] and q.get("check_catalog", {}).get("ok", True) for q in queries.values())}


def _catalog_checks(conn) -> dict | None:
    """Return check_catalog()'s verdict per query id, or None when the package has no such check."""
    try:
        from abathur_db.validation import check_catalog  # a newer module than the catalog: may be absent
    except ImportError:
        return None
    return {check.id: {"ok": bool(check.ok), "problems": list(check.problems)} for check in check_catalog(conn)}


def phase_integrity(conn) -> dict:
    """Count foreign-key violations and run quick_check on the database as the run left it."""
    violations = conn.execute("PRAGMA foreign_key_check").fetchall()
    quick = [row[0] for row in conn.execute("PRAGMA quick_check")]
    return {"foreign_key_violations": len(violations), "quick_check": "ok" if quick == ["ok"] else quick[:5]}


def sizes(conn, path: str) -> dict:
    """Return the database, WAL and shared-memory file sizes, page counts and per-object sizes."""
    def size(p):
        return os.path.getsize(p) if os.path.exists(p) else 0

    result = {
        "db_bytes": size(path),
        "wal_bytes": size(path + "-wal"),
        "shm_bytes": size(path + "-shm"),
        "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
        "page_count": conn.execute("PRAGMA page_count").fetchone()[0],
        "freelist_count": conn.execute("PRAGMA freelist_count").fetchone()[0],
    }
    try:  # dbstat is optional in SQLite builds
        result["objects"] = {name: {"bytes": pgsize, "pages": pages} for name, pgsize, pages in conn.execute(
            "SELECT name, sum(pgsize), count(*) FROM dbstat GROUP BY name ORDER BY sum(pgsize) DESC")}
    except sqlite3.Error:
        result["objects"] = None
    return result


# --------------------------------------------------------------------------- machine, coverage, bars


def machine() -> dict:
    """Return cores, memory, CPU model, Python and SQLite versions and the load average."""
    info = {"cores": os.cpu_count(), "memory_kib": None, "cpu_model": platform.processor() or None,
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(), "load_average_start": list(os.getloadavg())}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_kib"] = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def code_version() -> dict:
    """Return the checkout's commit and whether the package or schema have uncommitted changes."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "abathur_db", "schema")
    # Porcelain lines are "XY path": the status letters may start with a space.
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None,
            "uncommitted_changes": [line[3:] for line in changed.splitlines() if line.strip()]}


def read_coverage(path: str | None) -> dict:
    """Return the total coverage of a coverage.py JSON or XML (Cobertura) report, if one is given."""
    if not path:
        return {"percent": None, "source": None}
    text = Path(path).read_text()
    if text.lstrip().startswith("{"):
        totals = json.loads(text)["totals"]
        return {"percent": round(float(totals["percent_covered"]), 1), "source": path}
    root = ElementTree.fromstring(text)
    return {"percent": round(float(root.get("line-rate", 0)) * 100, 1), "source": path}


def evaluate(figures: dict) -> list[dict]:
    """Judge every SPEC §6 bar (and the seed's) from the figures; return one dict per bar."""
    cat = {k: v for k, v in figures["catalog"].items() if v.get("measured")}
    p99 = {k: v["package"]["p99_us"] for k, v in cat.items()}
    worst_p99 = max(p99, key=p99.get) if p99 else None
    read_ratios = {k: v["time_ratio"] for k, v in cat.items() if v["kind"] == "read"}
    write_ratios = {k: v["time_ratio"] for k, v in cat.items() if v["kind"] == "write"}
    write_ratios["single insert"] = figures["single_insert"]["time_ratio"]
    worst_read = max(read_ratios, key=read_ratios.get) if read_ratios else None
    worst_write = max(write_ratios, key=write_ratios.get)
    idx = figures["index_cost"]
    claims = figures["claim"]
    mixed = figures["mixed"]["package"]
    per_op_p99 = {k: v["p99_us"] for k, v in mixed["per_op"].items() if k in figures["catalog"]}
    worst_mixed = max(per_op_p99, key=per_op_p99.get) if per_op_p99 else None
    bad_reads = sorted(k for k, r in read_ratios.items() if r > 1.2)
    slow = sorted(k for k, v in p99.items() if v >= 1000)

    def bar(key, what, target, value, met, detail=""):
        return {"id": key, "what": what, "target": target, "value": value, "met": bool(met), "detail": detail}

    concurrency = [claims["threads"], claims["processes"]]
    return [
        bar("catalog_p99", "each §5 query, one thread", "p99 < 1 ms",
            f"worst {worst_p99} p99 {p99[worst_p99] / 1000:.3f} ms" if worst_p99 else "n/a",
            not slow and worst_p99, "over 1 ms: " + ", ".join(slow) if slow else "all under 1 ms"),
        bar("overhead_reads", "wrapper overhead, reads", "<= 1.2x raw (median)",
            f"worst {worst_read} {read_ratios[worst_read]:.2f}x" if worst_read else "n/a",
            worst_read and read_ratios[worst_read] <= 1.2,
            "over 1.2x: " + ", ".join(f"{k} {read_ratios[k]:.2f}x" for k in bad_reads) if bad_reads else ""),
        bar("overhead_writes", "wrapper overhead, writes", "<= 1.2x raw (median)",
            f"worst {worst_write} {write_ratios[worst_write]:.2f}x",
            write_ratios[worst_write] <= 1.2, ", ".join(f"{k} {v:.2f}x" for k, v in write_ratios.items())),
        bar("single_insert", "single-row task insert + commit", ">= 0.8x raw (rows/s)",
            f"{figures['single_insert']['throughput_ratio']:.2f}x "
            f"({_per_s(figures['single_insert']['package'])} vs {_per_s(figures['single_insert']['raw'])} rows/s)",
            figures["single_insert"]["throughput_ratio"] >= 0.8),
        bar("bulk_insert", "bulk insert, one transaction", ">= 0.8x raw executemany (rows/s)",
            f"{figures['bulk_insert']['throughput_ratio']:.2f}x ({figures['bulk_insert']['package_rows_per_s']:,.0f}"
            f" vs {figures['bulk_insert']['raw_rows_per_s']:,.0f} rows/s)",
            figures["bulk_insert"]["throughput_ratio"] >= 0.8),
        bar("index_cost", "write cost of all indexes", "<= 1.5x keys-only (each table; batches and single rows)",
            "; ".join(f"{label}: worst {idx[mode + '_worst_table']} "
                      f"{idx['tables'][idx[mode + '_worst_table']][mode]['ratio']:.2f}x,"
                      f" all tables {idx[mode + '_all_tables_ratio']:.2f}x"
                      for mode, label in (("batch", "200-row batches"), ("single", "single-row commits"))),
            all((t[mode]["ratio"] or 0) <= 1.5 for t in idx["tables"].values() for mode in ("batch", "single")),
            ", ".join(f"{k} {v['batch']['ratio']:.2f}x / {v['single']['ratio']:.2f}x"
                      for k, v in idx["tables"].items())),
        bar("claim_one_thread", "claim_next, 1 thread", ">= 0.9x raw loop (claims/s)",
            f"{claims['one_thread']['throughput_ratio']:.2f}x ({_per_s(claims['one_thread']['package'])}"
            f" vs {_per_s(claims['one_thread']['raw'])} claims/s)",
            claims["one_thread"]["throughput_ratio"] >= 0.9),
        bar("claim_concurrency", "claim_next, 10 threads and 4 processes", "0 duplicates, 0 lock errors",
            " / ".join(f"{c['workers']} {'threads' if c is claims['threads'] else 'processes'}: "
                       f"{c['claims']} claims, {c['duplicates']} dup, {c['lock_errors']} locked"
                       for c in concurrency),
            all(c["duplicates"] == 0 and c["lock_errors"] == 0 and c["other_errors"] == 0 and c["claims"] > 0
                for c in concurrency)),
        bar("mixed_p99", "10 threads, 90 % reads / 10 % writes", "p99 < 50 ms (reads and writes)",
            f"read {mixed['read']['p99_us'] / 1000:.1f} ms, write {mixed['write']['p99_us'] / 1000:.1f} ms"
            f" (raw: read {figures['mixed']['raw']['read']['p99_us'] / 1000:.1f} ms,"
            f" write {figures['mixed']['raw']['write']['p99_us'] / 1000:.1f} ms)",
            mixed["read"]["p99_us"] < 50_000 and mixed["write"]["p99_us"] < 50_000),
        bar("seed_query_p99_10_connections", "seed: every §5 query with 10 simultaneous connections",
            "p99 < 50 ms", f"worst {worst_mixed} {per_op_p99[worst_mixed] / 1000:.1f} ms" if worst_mixed else "n/a",
            worst_mixed and per_op_p99[worst_mixed] < 50_000),
    ]


def _per_s(side: dict) -> str:
    """Return the operations per second one median duration stands for, as text."""
    return f"{1e6 / side['median_us']:,.0f}"


def success_metrics(figures: dict) -> list[dict]:
    """Fill the seed's success-metric table from the figures."""
    coverage = figures["coverage"]["percent"]
    cat = [v["package"]["p99_us"] for v in figures["catalog"].values() if v.get("measured")]
    mixed = [v["p99_us"] for k, v in figures["mixed"]["package"]["per_op"].items() if k in figures["catalog"]]
    worst = max(cat + mixed) / 1000 if cat else None
    rate = figures["plans"]["index_usage_rate_pct"]
    violations = figures["integrity"]["foreign_key_violations"]
    return [
        {"metric": "Unit test coverage", "target": "90%+",
         "actual": f"{coverage:.1f} %" if coverage is not None else "not measured in this run",
         "status": "n/a" if coverage is None else ("met" if coverage >= 90 else "missed")},
        {"metric": "Query latency (99th %ile)", "target": "<50ms",
         "actual": f"{worst:.2f} ms (worst §5 query, 1 thread and 10 connections)" if worst is not None else "n/a",
         "status": "met" if worst is not None and worst < 50 else "missed"},
        {"metric": "Index usage rate", "target": "100%", "actual": f"{rate:.0f} %",
         "status": "met" if rate == 100 else "missed"},
        {"metric": "Foreign key violations", "target": "0", "actual": str(violations),
         "status": "met" if violations == 0 else "missed"},
        {"metric": "Code review approval", "target": "100%", "actual": "not measured by this tool", "status": "n/a"},
    ]


# --------------------------------------------------------------------------- report


def render_report(f: dict) -> str:
    """Render the figures as the Markdown baseline document."""
    m, meta, ds = f["machine"], f["meta"], f["dataset"]
    out: list[str] = []
    add = out.append

    def table(header: list[str], rows: list[list[Any]]) -> None:
        add("| " + " | ".join(header) + " |")
        add("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            add("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
        add("")

    def us(v):
        return "" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")

    def x(v):
        return "" if v is None else f"{v:.2f}x"

    add("# Performance baseline — milestone 1")
    add("")
    add(f"Generated by `{meta['command']}` on {meta['started_at']} (tool version {meta['tool_version']}). "
        "Do not edit by hand: run the tool again.")
    add("")
    runs = f["meta"].get("runs", 1)
    if runs > 1:
        add(f"Each figure is the median of {runs} runs of every timed phase on the same data set "
            "(counts of duplicates and errors are their sum over the runs). ")
    add("Method: each figure is measured with the package and raw `sqlite3` interleaved "
        "(alternating per call or per batch), raw running the same SQL and doing the same work "
        "(rows to dicts, JSON decoded; ids and timestamps from the same helpers). Single-thread comparisons "
        "run both sides on the same connection, so only the code differs (a write through another connection "
        "would empty this one's page cache). Ratios are package/raw "
        "of medians: a time ratio above 1 means the package is slower, a throughput ratio (raw median time / "
        "package median time) below 1 the same. "
        "Machines are noisy: compare ratios, and medians of several runs.")
    add("")
    add("## Machine and run")
    add("")
    table(["", ""], [
        ["CPU", f"{m['cpu_model']} — {m['cores']} cores"],
        ["Memory", f"{m['memory_kib'] / 1024 / 1024:.1f} GiB" if m["memory_kib"] else "unknown"],
        ["Python / SQLite", f"{m['python']} / {m['sqlite']}"],
        ["Platform", m["platform"]],
        ["Load average (1, 5, 15 min) at start → end",
         f"{', '.join(f'{v:.2f}' for v in m['load_average_start'])} → "
         f"{', '.join(f'{v:.2f}' for v in m['load_average_end'])}"],
        ["Scale / seed / list page size", f"{meta['scale']} / {meta['seed']} / {meta['list_limit']} rows"],
        ["Code", f"commit {meta['code']['commit']}" + (
            f", with uncommitted changes to {', '.join(meta['code']['uncommitted_changes'])}"
            if meta["code"]["uncommitted_changes"] else "")],
        ["Connection tuning", meta["tuning"]],
        ["Run time", f"{meta['duration_s']:.0f} s (seeding {ds['seconds_total']:.0f} s)"],
    ])
    add("## Data set")
    add("")
    table(["table", "rows", "seeded in (s)"], [[k, f"{v:,}", ds["seconds"][k]] for k, v in ds["counts"].items()])
    q = ds["queue"]
    add(f"Tasks by status: {', '.join(f'{k} {v:,}' for k, v in q['by_status'].items())} "
        f"({q['pending_pct']:.1f} % pending). {q['blocked_pending']:,} pending tasks wait on unfinished "
        f"dependencies, among them the {q['blocked_block']:,} most urgent pending tasks (priority 10, oldest), "
        f"which every claim must step over; {q['claimable']:,} tasks are claimable. "
        f"{q['without_session']:,} tasks have no session, {q['with_parent']:,} have a parent, "
        f"{q['with_dependencies']:,} have dependencies.")
    add("")
    add("## SPEC §6 bars")
    add("")
    table(["bar", "target", "measured", "status", "detail"],
          [[b["what"], b["target"], b["value"], "**met**" if b["met"] else "**MISSED**", b["detail"]]
           for b in f["bars"]])
    missed = {b["id"] for b in f["bars"] if not b["met"]}
    if missed:
        add("Why the missed bars are missed, from this run's own figures:")
        add("")
        for line in missed_reasons(f, missed):
            add(f"- {line}")
        add("")
    add("## Seed success metrics")
    add("")
    table(["Metric", "Target", "Actual", "Status"],
          [[s["metric"], s["target"], s["actual"], s["status"]] for s in f["success_metrics"]])
    add("## §5 catalog queries, one thread (µs)")
    add("")
    rows = []
    for cid, c in f["catalog"].items():
        if not c.get("measured"):
            rows.append([cid, c["title"], "not measured"] + [""] * 9)
            continue
        p, r = c["package"], c["raw"]
        rows.append([cid, c["title"], us(p["median_us"]), us(p["p95_us"]), us(p["p99_us"]), us(r["median_us"]),
                     us(r["p95_us"]), us(r["p99_us"]), x(c["time_ratio"]), x(c["p99_ratio"]),
                     "yes" if p["p99_us"] < 1000 else "**no**",
                     "yes" if f["plans"]["queries"][cid]["ok"]
                     and f["plans"]["queries"][cid].get("check_catalog", {}).get("ok", True) else "**no**"])
    table(["id", "query", "package median", "p95", "p99", "raw median", "p95", "p99", "ratio (median)",
           "ratio (p99)", "p99 < 1 ms", "plan ok"], rows)
    add(f"{f['catalog_samples']} samples per side and query; T2 and T7 are writes (each in its own "
        "`BEGIN IMMEDIATE … COMMIT`); parameters are drawn from the data set. List queries ask for "
        f"{f['meta']['list_limit']} rows, a page (the functions' default `limit` is 100): turning rows into "
        "dicts and decoding their JSON costs 5–10 µs a row on either side, so a 100-row page takes 1–3 ms "
        "however it is served; `--list-limit 100` measures that.")
    add("")
    add("## Inserts")
    add("")
    si, bi = f["single_insert"], f["bulk_insert"]
    table(["", "package", "raw", "ratio"], [
        ["single-row insert + commit: median µs", us(si["package"]["median_us"]), us(si["raw"]["median_us"]),
         x(si["time_ratio"])],
        ["single-row: p95 / p99 µs", f"{us(si['package']['p95_us'])} / {us(si['package']['p99_us'])}",
         f"{us(si['raw']['p95_us'])} / {us(si['raw']['p99_us'])}", ""],
        ["single-row: rows/s (from the median; from the mean)",
         f"{_per_s(si['package'])}; {si['package']['ops_per_s']:,.0f}",
         f"{_per_s(si['raw'])}; {si['raw']['ops_per_s']:,.0f}", x(si["throughput_ratio"])],
        [f"bulk, {bi['rows_per_batch']:,} rows per transaction: median ms per batch",
         f"{bi['package']['median_us'] / 1000:.1f}", f"{bi['raw']['median_us'] / 1000:.1f}", x(bi["time_ratio"])],
        ["bulk: rows/s (from the median batch)", f"{bi['package_rows_per_s']:,.0f}", f"{bi['raw_rows_per_s']:,.0f}",
         x(bi["throughput_ratio"])],
    ])
    add("Single row: `tasks.create` vs raw `BEGIN IMMEDIATE; INSERT … RETURNING; COMMIT` and decode. "
        "Bulk: `tasks.create_many` (every task checked, one INSERT each, one transaction) vs raw "
        "`executemany` of the same INSERT in one transaction.")
    add("")
    def cost_table(cost, a, b, a_label, b_label, everything):
        rows = []
        for t, v in cost["tables"].items():
            rows.append([t] + [cell for mode in ("batch", "single") for cell in
                               (us(v[mode][a]), us(v[mode][b]), x(v[mode]["ratio"]))])
        rows.append([everything, "", "", x(cost["batch_all_tables_ratio"]), "", "", x(cost["single_all_tables_ratio"])])
        table(["table", f"batch: {a_label} µs/row", f"{b_label} µs/row", "ratio",
               f"single-row commit: {a_label} µs", f"{b_label} µs", "ratio"], rows)

    ic = f["index_cost"]
    add("## Write cost of the indexes")
    add("")
    cost_table(ic, "all_indexes_us_per_row", "keys_only_us_per_row", "all indexes", "keys only", "all five")
    table(["table", "package function, own transaction", "all indexes µs", "keys only µs", "ratio"],
          [[t, v["package"]["function"], us(v["package"]["all_indexes_us_per_row"]),
            us(v["package"]["keys_only_us_per_row"]), x(v["package"]["ratio"])]
           for t, v in ic["tables"].items() if "package" in v])
    add(f"Raw inserts of the same rows into the database and into a copy of it without its non-unique indexes "
        "(triggers, CHECKs, foreign keys and UNIQUE indexes kept), alternating: batches of "
        f"{f['write_rows']} rows per transaction (executemany), and single-row transactions in blocks of "
        f"{SINGLE_ROW_BLOCK}; medians. Rows reference recent tasks and agents, as live work does. The bar is judged "
        "on the raw inserts; the second table makes the same comparison through the package's insert functions "
        "(for context only). "
        f"Dropped in the copy: {', '.join(ic['dropped_indexes'])}.")
    add("")
    add("Why raw inserts cost more than 1.5x with every index: each index a row belongs to is one more "
        "B-tree insert, and in a single-row commit one more 4 KiB page written to the WAL and later "
        "checkpointed. Indexes led by a task or session id (`idx_tasks_session_id`, `idx_agents_task_id`, "
        "`idx_audit_task_id`) insert at random places in large B-trees, which weighs most in batches; "
        "time-ordered ones append and cost little. The 15 core indexes are the contract and each serves a "
        "catalog query, so the insert path cannot drop them; partial indexes already keep rows without a "
        "session, parent or memory operation out of theirs. Narrower index shapes, 2 KiB pages and a larger "
        "page cache were tried while building this tool and gained nothing measurable.")
    add("")
    fk = f["fk_cost"]
    add("## Write cost of the foreign keys")
    add("")
    cost_table(fk, "fk_on_us_per_row", "fk_off_us_per_row", "foreign_keys ON", "OFF", "all four")
    add("The same kind of rows on one database through two connections, one with `foreign_keys` OFF; "
        "no SPEC bar (the seed asks for the measurement).")
    add("")
    add("## claim_next")
    add("")
    one = f["claim"]["one_thread"]
    table(["", "package", "raw loop", "ratio"], [
        ["1 thread: claims/s (from the median; from the mean)",
         f"{_per_s(one['package'])}; {one['package']['ops_per_s']:,.0f}",
         f"{_per_s(one['raw'])}; {one['raw']['ops_per_s']:,.0f}", x(one["throughput_ratio"])],
        ["1 thread: median / p99 µs", f"{us(one['package']['median_us'])} / {us(one['package']['p99_us'])}",
         f"{us(one['raw']['median_us'])} / {us(one['raw']['p99_us'])}", x(one["time_ratio"])],
    ])
    table(["workers", "claims", "duplicates", "lock errors", "other errors", "empty claims", "claims/s",
           "median µs", "p99 µs"],
          [[f"{c['workers']} {kind}", c["claims"], c["duplicates"], c["lock_errors"], c["other_errors"],
            c["empty_claims"], f"{c['claims_per_s']:,.0f}", us(c["latency"]["median_us"]), us(c["latency"]["p99_us"])]
           for kind, c in (("threads", f["claim"]["threads"]), ("processes", f["claim"]["processes"]))])
    mx = f["mixed"]
    add("## 10 threads, 90 % reads / 10 % writes")
    add("")
    table(["side", "kind", "n", "median µs", "p95 µs", "p99 µs", "ops/s (all kinds)", "errors"],
          [[side, kind, mx[side][kind]["n"], us(mx[side][kind]["median_us"]), us(mx[side][kind]["p95_us"]),
            us(mx[side][kind]["p99_us"]), f"{mx[side]['ops_per_s']:,.0f}", mx[side]["errors"]]
           for side in ("package", "raw") for kind in ("read", "write")])
    add(f"Each thread has its own connection; {mx['ops_per_thread_per_round']} operations per thread per round, "
        "2 rounds per side, package and raw rounds alternating. Reads are the §5 read queries, writes are "
        f"{', '.join(MIXED_WRITES)}. p99 package/raw: reads {x(mx['read_p99_ratio'])}, writes "
        f"{x(mx['write_p99_ratio'])}.")
    add("")
    add("Per operation under 10 connections (package side; the seed's bar is p99 < 50 ms for every query):")
    add("")
    table(["operation", "n", "median µs", "p99 µs", "raw p99 µs"],
          [[name, s["n"], us(s["median_us"]), us(s["p99_us"]), us(mx["raw"]["per_op"].get(name, {}).get("p99_us"))]
           for name, s in mx["package"]["per_op"].items()])
    pl = f["plans"]
    add("## Query plans")
    add("")
    add(f"Index usage rate: {pl['index_usage_rate_pct']:.0f} % (from {pl['source']}; a query uses its index when "
        "every index the catalog names for it appears in its plan).")
    add("")
    table(["id", "required index", "plan (parameters from the data set)", "ok", "check_catalog()"],
          [[cid, ", ".join(p["indexes"]), "`" + p["plan"] + "`", "yes" if p["ok"] else "**no**",
            "" if "check_catalog" not in p else ("ok" if p["check_catalog"]["ok"]
                                                 else "**" + "; ".join(p["check_catalog"]["problems"]) + "**")]
           for cid, p in pl["queries"].items()])
    sz, after = f["sizes"], f["sizes"]["after_seeding"]
    add("## Database size")
    add("")
    table(["", "after seeding", "end of run"], [
        ["database file", _mib(after["db_bytes"]), _mib(sz["end"]["db_bytes"])],
        ["WAL file", _mib(after["wal_bytes"]) + " (before checkpoint)", _mib(sz["end"]["wal_bytes"])],
        ["pages × size", f"{after['page_count']:,} × {after['page_size']}",
         f"{sz['end']['page_count']:,} × {sz['end']['page_size']}"],
    ])
    objects = sz["end"].get("objects")
    if objects:
        table(["table or index", "size", "pages"], [[k, _mib(v["bytes"]), f"{v['pages']:,}"]
                                                    for k, v in objects.items()])
    integ = f["integrity"]
    add(f"Integrity at the end of the run: `PRAGMA foreign_key_check` {integ['foreign_key_violations']} violations, "
        f"`PRAGMA quick_check` {integ['quick_check']}.")
    add("")
    return "\n".join(out)


def missed_reasons(f: dict, missed: set[str]) -> list[str]:
    """Return one sentence per missed bar, explaining it with the run's figures."""
    reasons = []
    if "overhead_writes" in missed:
        t7, insert, claim = f["catalog"]["T7"], f["single_insert"], f["catalog"]["T2"]
        extra = t7["package"]["median_us"] - t7["raw"]["median_us"]
        reasons.append(
            f"Write overhead: the requeue of stale tasks (T7) is a {t7['raw']['median_us']:.0f} µs statement now "
            f"that it reads only stale tasks; the package's fixed cost per write ({extra:.0f} µs here: argument "
            "checks, the in-process write lock, transaction bookkeeping) is a large share of so little work. The "
            f"same cost is {insert['time_ratio']:.2f}x on a task insert and {claim['time_ratio']:.2f}x on a claim.")
    if "index_cost" in missed:
        reasons.append("Index write cost: see the section on the indexes' write cost below.")
    if missed & {"mixed_p99", "seed_query_p99_10_connections"}:
        mixed = f["mixed"]
        runs = mixed.get("runs_write_p99_ms")
        spread = f" (write p99 of each run: {', '.join(f'{v:.0f}' for v in runs)} ms)" if runs else ""
        reasons.append(
            "10 threads: two cores and one interpreter lock shared by ten busy threads. A writer keeps the write "
            "lock through three statements (BEGIN IMMEDIATE, the write, COMMIT) and must win the interpreter "
            "lock back from nine other threads before each; the write queue turns those waits into the write "
            f"tail{spread}. Queuing writers on an in-process lock instead of SQLite's sleeping busy handler "
            f"already cuts the tail well below raw's ({mixed['raw']['write']['p99_us'] / 1000:.0f} ms); reads, "
            f"which never queue, stay at {mixed['package']['read']['p99_us'] / 1000:.0f} ms.")
    return reasons


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.1f} MiB"


# --------------------------------------------------------------------------- main


def queue_summary(conn, data: Dataset) -> dict:
    """Return the task queue's shape: statuses, blocked and claimable tasks, links."""
    by_status = dict(conn.execute("SELECT status, count(*) FROM tasks GROUP BY status ORDER BY 2 DESC"))
    total = sum(by_status.values())

    def one(sql):
        return conn.execute(sql).fetchone()[0]

    return {
        "by_status": by_status,
        "pending_pct": round(100 * by_status.get("pending", 0) / total, 1),
        "blocked_pending": one("SELECT count(*) FROM tasks WHERE status = 'pending' AND unmet_dependencies > 0"),
        "blocked_block": data.blocked_block,
        "claimable": one("SELECT count(*) FROM tasks WHERE status = 'pending' AND unmet_dependencies = 0"),
        "without_session": one("SELECT count(*) FROM tasks WHERE session_id IS NULL"),
        "with_parent": one("SELECT count(*) FROM tasks WHERE parent_task_id IS NOT NULL"),
        "with_dependencies": one("SELECT count(*) FROM tasks WHERE dependencies <> '[]'"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--report", metavar="FILE", help="write the Markdown baseline "
                        "(docs/performance_baseline_milestone1.md)")
    parser.add_argument("--coverage", metavar="FILE", help="coverage.py JSON or XML report to quote")
    parser.add_argument("--dir", metavar="DIR", help="where to put the databases (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the database after the run")
    parser.add_argument("--cache-size", type=int, metavar="KIB", help="PRAGMA cache_size for every connection")
    parser.add_argument("--mmap-size", type=int, metavar="BYTES", help="PRAGMA mmap_size for every connection")
    parser.add_argument("--runs", type=int, default=1, metavar="N",
                        help="repeat the timed phases N times on the same data set and report medians")
    parser.add_argument("--list-limit", type=int, default=20, metavar="N",
                        help="rows asked of each list query (default 20, a page; the package's own default is 100)")
    return parser.parse_args(argv)


def measure(conn, pool, path, workdir, ops, data, scale, rng, tuning, seed) -> dict:
    """Run every timed phase once; return their figures."""
    figures: dict[str, Any] = {}
    progress(f"catalog: {len(catalog.CATALOG)} queries × {scale.samples} samples per side")
    figures["catalog"] = phase_catalog(conn, ops, data, scale, rng)
    progress("single-row inserts")
    figures["single_insert"] = phase_single_insert(conn, ops, data, scale, rng)
    progress("bulk inserts")
    figures["bulk_insert"] = phase_bulk_insert(conn, ops, data, scale, rng)
    progress("claim_next, 1 thread")
    figures["claim"] = {"one_thread": phase_claim_one_thread(conn, ops, data, scale)}
    progress("claim_next, 10 threads")
    figures["claim"]["threads"] = phase_claim_threads(pool, data, scale, tuning)
    progress("claim_next, 4 processes")
    figures["claim"]["processes"] = phase_claim_processes(pool, path, data, scale, tuning)
    progress("10 threads, 90 % reads / 10 % writes")
    figures["mixed"] = phase_mixed(pool, path, ops, data, scale, seed, tuning)
    progress("foreign-key cost")
    figures["fk_cost"] = phase_fk_cost(path, data, scale, rng, tuning)
    progress("index cost (copying the database without its non-unique indexes)")
    figures["index_cost"] = phase_index_cost(path, workdir, ops, data, scale, rng, tuning)
    return figures


# Counts of things that must never happen are added up over the runs, never averaged away.
_SUMMED = {"duplicates", "lock_errors", "other_errors", "errors"}


def combine_runs(runs: list[dict]) -> dict:
    """Return the figures of several runs as one: the median of each number, the sum of error counts."""
    first = runs[0]
    if isinstance(first, dict):
        return {key: (sum(run[key] for run in runs) if key in _SUMMED else combine_runs([run[key] for run in runs]))
                for key in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
            isinstance(run, (int, float)) for run in runs):
        # A count stays a count: the lower middle value rather than the mean of two.
        return statistics.median_low(runs) if all(isinstance(run, int) for run in runs) else statistics.median(runs)
    return first


def main(argv: list[str] | None = None) -> int:
    """Run every phase, print the bars, write the JSON and the report; return the exit code."""
    args = parse_args(argv)
    scale = SCALES[args.scale]
    tuning = Tuning(args.cache_size, args.mmap_size)
    _check_timestamp_format()
    began = time.monotonic()
    now_ms = int(time.time() * 1000)
    workdir = tempfile.mkdtemp(prefix="abathur-bench-", dir=args.dir)
    path = os.path.join(workdir, "bench.db")
    rng = random.Random(f"{args.seed}-measure")
    figures: dict[str, Any] = {"meta": {
        "tool_version": TOOL_VERSION, "scale": scale.name, "seed": args.seed, "tuning": tuning.describe(),
        "list_limit": args.list_limit, "code": code_version(),
        "started_at": ts(now_ms),
        "command": "python tools/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }, "machine": machine()}
    figures["coverage"] = read_coverage(args.coverage)
    progress(f"scale {scale.name}, seed {args.seed}, database {path}, {tuning.describe()}")
    pool = abathur_db.open(path)
    try:
        conn = tuning.apply(pool.connection())
        data = build_dataset(conn, scale, args.seed, now_ms)
        seeded = sizes(conn, path)
        seeded.pop("objects", None)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        figures["dataset"] = {"counts": data.counts, "seconds": data.seconds,
                              "seconds_total": round(sum(data.seconds.values()), 1),
                              "queue": queue_summary(conn, data)}
        ops = build_ops(data, args.list_limit)
        figures["catalog_samples"] = scale.samples
        figures["write_rows"] = scale.write_rows
        runs = []
        for run in range(1, args.runs + 1):
            if args.runs > 1:
                progress(f"run {run} of {args.runs}")
            runs.append(measure(conn, pool, path, workdir, ops, data, scale, rng, tuning, args.seed))
        figures.update(combine_runs(runs))
        figures["mixed"]["runs_write_p99_ms"] = [run["mixed"]["package"]["write"]["p99_us"] / 1000 for run in runs]
        figures["meta"]["runs"] = args.runs
        progress("query plans, integrity, sizes")
        figures["plans"] = phase_plans(conn, ops, rng)
        end_sizes = sizes(conn, path)
        figures["integrity"] = phase_integrity(conn)
        figures["sizes"] = {"after_seeding": seeded, "end": end_sizes}
    finally:
        pool.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    figures["machine"]["load_average_end"] = list(os.getloadavg())
    figures["meta"]["duration_s"] = round(time.monotonic() - began, 1)
    figures["bars"] = evaluate(figures)
    figures["success_metrics"] = success_metrics(figures)
    for b in figures["bars"]:
        print(f"{'met   ' if b['met'] else 'MISSED'}  {b['what']}: {b['value']} (target {b['target']})")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(render_report(figures) + "\n")
    progress(f"done in {figures['meta']['duration_s']:.0f}s" + (f"; kept {workdir}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
