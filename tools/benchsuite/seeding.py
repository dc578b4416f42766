"""Seed the data set: a realistic, seeded history written by raw executemany through the package's schema."""

from __future__ import annotations

import bisect
import random
import sqlite3
import time

import abathur_db

from .dataset import (ACTIONS, AGENT_TYPES, DAY_MS, MEMORY_OPERATIONS, MODELS, METRIC_NAMES, PRIORITY_WEIGHTS,
                      SPAN_DAYS, WORDS, Dataset, Scale, ts, uuid7)
from .raw import INSERT_SQL, dumps
from .timing import progress


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
