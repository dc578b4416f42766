"""Ten threads on a 90 % read / 10 % write mix, package rounds alternating with raw rounds."""

from __future__ import annotations

import collections
import gc
import random
import sqlite3
import threading

from abathur_db.errors import AbathurDBError

from ..dataset import restore_claimed
from ..markdown import Markdown, us, x
from ..ops import Bench
from ..raw import raw_connect
from ..timing import CLOCK, latency, progress, ratio
from .claims import THREADS, TIMEOUT

WRITES = ("T2", "T7", "T9", "insert_task", "insert_audit", "insert_checkpoint", "insert_metric", "set_state")
ROUNDS = ("package", "raw", "package", "raw")


def measure(bench: Bench) -> dict:
    """Run 10 threads on 90 % catalog reads / 10 % writes; package and raw rounds alternate."""
    reads = [op for op in bench.ops.values() if op.kind == "read"]
    writes = [bench.ops[name] for name in WRITES]
    per_side: dict[str, dict[str, list[int]]] = {"package": collections.defaultdict(list),
                                                 "raw": collections.defaultdict(list)}
    walls = {"package": 0, "raw": 0}
    errors = {"package": 0, "raw": 0}
    for number, side in enumerate(ROUNDS):
        plans = []
        for k in range(THREADS):
            rng = random.Random(f"{bench.seed}-mixed-{number}-{k}")
            plan = []
            for _ in range(bench.scale.mixed_ops):
                op = rng.choice(reads) if rng.random() < 0.9 else rng.choice(writes)
                plan.append((op, op.sample(rng)))
            plans.append(plan)
        wall, failures, samples = _round(bench, side, plans)
        walls[side] += wall
        errors[side] += failures
        for name, kind, ns in samples:
            per_side[side][kind].append(ns)
            per_side[side]["op:" + name].append(ns)
        restore_claimed(bench.conn, bench.data)
        progress(f"  mixed round {number + 1}/{len(ROUNDS)} ({side}) done")
    result = {"threads": THREADS, "ops_per_thread_per_round": bench.scale.mixed_ops,
              "rounds_per_side": ROUNDS.count("package"), "writes": list(WRITES)}
    for side in ("package", "raw"):
        lists = per_side[side]
        count = len(lists["read"]) + len(lists["write"])
        result[side] = {
            # Pooled over runs (timing.latency): the p99 bars are judged on every run's samples together.
            "read": latency(lists["read"]),
            "write": latency(lists["write"]),
            "errors": errors[side],
            "ops_per_s": round(count / (walls[side] / 1e9), 1) if walls[side] else None,
            "per_op": {name[3:]: latency(values) for name, values in sorted(lists.items()) if name.startswith("op:")},
        }
    result["read_p99_ratio"] = ratio(result["package"]["read"]["p99_us"], result["raw"]["read"]["p99_us"])
    result["write_p99_ratio"] = ratio(result["package"]["write"]["p99_us"], result["raw"]["write"]["p99_us"])
    return result


def _round(bench: Bench, side: str, plans: list) -> tuple[int, int, list[tuple[str, str, int]]]:
    """Run one round of every thread's plan on `side`; return the wall time, failures and samples."""
    start = threading.Barrier(THREADS + 1)
    samples: list[list[tuple[str, str, int]]] = [[] for _ in range(THREADS)]
    failures = [0] * THREADS

    def worker(k):
        if side == "package":
            conn = bench.tuning.apply(bench.pool.connection())
        else:
            conn = raw_connect(bench.path, bench.tuning)
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
    return CLOCK() - t0, sum(failures), [sample for mine in samples for sample in mine]


def report(figures: dict, md: Markdown) -> None:
    """Add the mixed-load section: reads and writes per side, then each operation under load."""
    mx = figures["mixed"]
    md.heading(f"{mx['threads']} threads, 90 % reads / 10 % writes")
    md.table(["side", "kind", "n", "median µs", "p95 µs", "p99 µs", "ops/s (all kinds)", "errors"],
             [[side, kind, mx[side][kind]["n"], us(mx[side][kind]["median_us"]), us(mx[side][kind]["p95_us"]),
               us(mx[side][kind]["p99_us"]), f"{mx[side]['ops_per_s']:,.0f}", mx[side]["errors"]]
              for side in ("package", "raw") for kind in ("read", "write")])
    md.paragraph(f"Each thread has its own connection; {mx['ops_per_thread_per_round']} operations per thread per",
                 f"round, {mx['rounds_per_side']} rounds per side, package and raw rounds alternating. Reads are the",
                 f"§5 read queries, writes are {', '.join(mx['writes'])}. p99 package/raw: reads",
                 f"{x(mx['read_p99_ratio'])}, writes {x(mx['write_p99_ratio'])}.")
    md.paragraph(f"Per operation under {mx['threads']} connections (package side; the seed's bar is p99 < 50 ms "
                 "for every query):")
    md.table(["operation", "n", "median µs", "p99 µs", "raw p99 µs"],
             [[name, s["n"], us(s["median_us"]), us(s["p99_us"]), us(mx["raw"]["per_op"].get(name, {}).get("p99_us"))]
              for name, s in mx["package"]["per_op"].items()])
