"""The data set's sizes, vocabulary and shape: what every workload draws its parameters from."""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import time
from dataclasses import dataclass, field

import abathur_db
from abathur_db import _values

SPAN_DAYS = 30  # the data set covers the 30 days before the run
DAY_MS = 86_400_000


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
    write_rows: int  # rows per transaction in the index and foreign-key cost workloads
    write_rounds: int  # per side and table
    claims: int  # per side, claim_next from one thread
    claims_per_worker: int  # each of 10 threads, then each of 4 processes
    mixed_ops: int  # per thread and round of the 90/10 mix (2 rounds per side)
    queue_items: tuple[int, ...]  # N of the queue workloads, each on fresh files
    typed_backlog: int  # claimable tasks of other types ahead of claim_next(agent_type=…)
    typed_claims: int  # per side
    pickups: int  # enqueue-to-claim times, with the waiting worker in this process and in another
    idle_seconds: float  # how long an idle worker's CPU is measured


SCALES = {
    "tiny": Scale("tiny", 20, 2_000, 2_000, 10_000, 1_000, 100,
                  samples=40, bulk_rows=100, bulk_batches=3, write_rows=50, write_rounds=3,
                  claims=40, claims_per_worker=10, mixed_ops=40,
                  queue_items=(240,), typed_backlog=2_000, typed_claims=40, pickups=20, idle_seconds=1),
    "small": Scale("small", 100, 20_000, 20_000, 100_000, 10_000, 1_000,
                   samples=1_000, bulk_rows=1_000, bulk_batches=6, write_rows=200, write_rounds=10,
                   claims=1_000, claims_per_worker=100, mixed_ops=500,
                   queue_items=(5_000,), typed_backlog=100_000, typed_claims=100, pickups=200, idle_seconds=5),
    # SPEC §6 sizes: 200,000 tasks, 200,000 agents, 1,000,000 audit rows, 1,000 sessions.
    "large": Scale("large", 1_000, 200_000, 200_000, 1_000_000, 100_000, 10_000,
                   samples=2_000, bulk_rows=1_000, bulk_batches=10, write_rows=200, write_rounds=20,
                   claims=2_000, claims_per_worker=200, mixed_ops=1_500,
                   queue_items=(5_000, 50_000), typed_backlog=100_000, typed_claims=200, pickups=500,
                   idle_seconds=10),
}

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


def ts(ms: int) -> str:
    """Return epoch milliseconds as the package's timestamp text (checked against format_datetime)."""
    seconds, rest = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:03d}Z"


def check_timestamp_format() -> None:
    """Raise AssertionError when ts() no longer writes what the package writes."""
    for ms in (0, 1_764_154_182_007, 1_799_999_999_999):
        moment = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).replace(microsecond=(ms % 1000) * 1000)
        if ts(ms) != _values.format_datetime(moment):
            raise AssertionError(f"bench timestamps drifted from the package: {ts(ms)!r}")


def uuid7(ms: int, rng: random.Random) -> str:
    """Return a time-ordered id in the package's UUID version 7 layout, drawn from `rng`."""
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rng.getrandbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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


def restore_claimed(conn: sqlite3.Connection, data: Dataset) -> int:
    """Put tasks claimed during the run back to pending, so every workload sees the same queue."""
    # Seeded running tasks started before the run; only the bench's own claims are later.
    with abathur_db.transaction(conn):
        return conn.execute(
            "UPDATE tasks SET status = 'pending', started_at = NULL, last_updated_at = submitted_at, lease = NULL"
            " WHERE status = 'running' AND started_at > :now", {"now": ts(data.now_ms)}).rowcount


def queue_summary(conn: sqlite3.Connection, data: Dataset) -> dict:
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
