#!/usr/bin/env python3
"""Time each operation of SPEC §6 with timeit, through abathur_db and through raw sqlite3, side by side.

Run from the checkout root::

    python tools/bench.py [--scale small|tiny] [--repeat N] [--number N] [--seed N]

It seeds the benchmark suite's data set (small: 20,000 tasks, 20,000 agents,
100,000 audit rows), then times every catalog query (T2 and T9 are claim_next), a
single-row task insert and a bulk insert: the package's call, and raw sqlite3
running the same SQL and doing the same work (rows to dicts, JSON decoded), in
alternating rounds of `number` calls each (chosen by ``Timer.autorange`` unless
given). It prints the best round's time per call on each side and their ratio
(package / raw: above 1, the package is slower), then every catalog query's plan
check and the foreign-key check. About a minute.

Percentiles, concurrency, write costs and the Markdown report come from the full
suite: ``python -m tools.benchsuite`` (see tools/benchsuite/__init__.py).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The checkout's package and suite, never an installed copy: the numbers are about this code.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import abathur_db  # noqa: E402
from abathur_db import catalog  # noqa: E402
from tools.benchsuite.dataset import (SCALES, Dataset, check_timestamp_format, queue_summary,  # noqa: E402
                                      restore_claimed)
from tools.benchsuite.ops import build_ops, create_many, raw_executemany  # noqa: E402
from tools.benchsuite.seeding import build_dataset  # noqa: E402
from tools.benchsuite.timing import timeit_pair  # noqa: E402

PARAMETERS = 500  # drawn per operation and cycled through, the same sequence on both sides
BULK_ROWS = 100
LIST_LIMIT = 20  # rows asked of each list query: a page, as the full suite asks by default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("small", "tiny"), default="small", help="data set size (default small)")
    parser.add_argument("--repeat", type=int, default=5, metavar="N", help="rounds per side (default 5)")
    parser.add_argument("--number", type=int, metavar="N", help="calls per round (default: Timer.autorange's)")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def measure(conn, data: Dataset, args: argparse.Namespace) -> list[dict]:
    """Time every catalog query, the single-row insert and the bulk insert; print and return each timing."""
    ops, rng = build_ops(data, LIST_LIMIT), random.Random(f"{args.seed}-timeit")
    claimable = queue_summary(conn, data)["claimable"]
    # T9 claims a task of a random type: a round must not run out of any type.
    claimable_per_type = conn.execute(
        "SELECT min(n) FROM (SELECT count(*) AS n FROM tasks WHERE status = 'pending' AND unmet_dependencies = 0"
        " GROUP BY agent_type)").fetchone()[0]
    results = []

    def pair(name, title, kind, package, raw, params, **options):
        sides = itertools.cycle(params), itertools.cycle(params)
        timing = timeit_pair(lambda: package(conn, next(sides[0])), lambda: raw(conn, next(sides[1])),
                             repeat=args.repeat, number=args.number, **options)
        results.append({"name": name, "kind": kind, **timing})
        print(f"  {name:<7} {title:<52} {timing['package_us']:>10,.1f} {timing['raw_us']:>10,.1f}"
              f" {timing['ratio']:>8.2f}x", flush=True)

    def requeued_per_call(op, params) -> int:
        """Return how many tasks one prepared call of the package's requeue takes back (the rows it times)."""
        op.prepare(conn)
        return len(op.package(conn, params[0]))

    print(f"  {'':<7} {'µs per call, best of ' + str(args.repeat) + ' rounds':<52} {'package':>10} {'raw':>10}"
          f" {'ratio':>9}")
    for entry in catalog.CATALOG:
        op = ops[entry.id]
        params = [op.sample(rng) for _ in range(PARAMETERS)]
        if entry.id in ("T2", "T9"):  # each round claims from the same refilled queue, never from an empty one
            pair(entry.id, op.title, op.kind, op.package, op.raw, params,
                 max_number=claimable if entry.id == "T2" else claimable_per_type,
                 setup=lambda: restore_claimed(conn, data))
        elif op.prepare is not None:  # T7: every call finds stale tasks to take back, made so untimed
            title = f"requeue_stale: {requeued_per_call(op, params)} stale tasks taken back a call"
            pair(entry.id, title, op.kind, op.package, op.raw, params, prepare=lambda op=op: op.prepare(conn))
            op.prepare.restore(conn)
        else:
            pair(entry.id, op.title, op.kind, op.package, op.raw, params)
    op = ops["insert_task"]
    pair("insert", op.title, "write", op.package, op.raw, [op.sample(rng) for _ in range(PARAMETERS)])
    batches = [[op.sample(rng) for _ in range(BULK_ROWS)] for _ in range(20)]
    pair("bulk", f"tasks.create_many vs executemany, {BULK_ROWS} tasks", "write", create_many, raw_executemany,
         batches)
    return results


def main(argv: list[str] | None = None) -> int:
    """Seed, time every operation on both sides, check the plans; print it all; return the exit code."""
    args = parse_args(argv)
    check_timestamp_format()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="abathur-bench-") as workdir:
        with abathur_db.open(os.path.join(workdir, "bench.db")) as pool:
            conn = pool.connection()
            data = build_dataset(conn, SCALES[args.scale], args.seed, int(time.time() * 1000))
            results = measure(conn, data, args)
            plans = abathur_db.check_catalog(conn)
            violations = abathur_db.validate_foreign_keys(conn)
    for kind in ("read", "write"):
        worst = max((r for r in results if r["kind"] == kind), key=lambda r: r["ratio"])
        print(f"wrapper overhead, {kind}s: worst {worst['name']} {worst['ratio']:.2f}x (SPEC §6 bar: <= 1.2x raw)")
    failed = [check.id for check in plans if not check.ok]
    print(f"query plans: {len(plans) - len(failed)} of {len(plans)} catalog queries use their index"
          + (f"; failing: {', '.join(failed)}" if failed else ""))
    print(f"foreign-key violations: {len(violations)}")
    print(f"done in {time.monotonic() - began:.0f} s")
    return 0 if not failed and not violations else 1


if __name__ == "__main__":
    sys.exit(main())
