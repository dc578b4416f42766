"""Run the full suite: seed the data set, run every workload, check the plans, save the figures as JSON."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import abathur_db

from . import checks
from .dataset import SCALES, check_timestamp_format, queue_summary, ts
from .environment import code_version, machine, read_coverage
from .ops import Bench, build_ops
from .raw import Tuning
from .seeding import build_dataset
from .timing import combine_runs, progress
from .verdicts import evaluate, success_metrics
from .workloads import MEASURED

TOOL_VERSION = 3
COMMAND = "python -m tools.benchsuite"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split(":")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", default="bench.json",
                        help="where to write every figure (default bench.json); render the report from it with "
                             "python -m tools.benchsuite.render FILE")
    parser.add_argument("--coverage", metavar="FILE", help="coverage.py JSON or XML report to quote")
    parser.add_argument("--dir", metavar="DIR", help="where to put the databases (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the database after the run")
    parser.add_argument("--cache-size", type=int, metavar="KIB", help="PRAGMA cache_size for every connection")
    parser.add_argument("--mmap-size", type=int, metavar="BYTES", help="PRAGMA mmap_size for every connection")
    parser.add_argument("--runs", type=int, default=1, metavar="N",
                        help="repeat the timed workloads N times on the same data set and report medians")
    parser.add_argument("--list-limit", type=int, default=20, metavar="N",
                        help="rows asked of each list query (default 20, a page; the package's own default is 100)")
    return parser.parse_args(argv)


def measure(bench: Bench) -> dict:
    """Run every timed workload once, in order; return their figures by key."""
    figures = {}
    for key, label, workload in MEASURED:
        progress(label)
        figures[key] = workload(bench)
    return figures


def _command(argv: list[str]) -> str:
    """Return the command line as run, each path by its last part: the report names no folder of the machine."""
    def shown(arg: str) -> str:
        option, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        return option + equals + (os.path.basename(value.rstrip(os.sep)) if os.sep in value else value)
    return " ".join([COMMAND, *map(shown, argv)])


def main(argv: list[str] | None = None) -> int:
    """Seed, measure, check, judge the bars, print them and write the JSON; return the exit code."""
    args = parse_args(argv)
    scale = SCALES[args.scale]
    tuning = Tuning(args.cache_size, args.mmap_size)
    check_timestamp_format()
    began = time.monotonic()
    now_ms = int(time.time() * 1000)
    workdir = tempfile.mkdtemp(prefix="abathur-bench-", dir=args.dir)
    path = os.path.join(workdir, "bench.db")
    figures: dict[str, Any] = {"meta": {
        "tool_version": TOOL_VERSION, "scale": scale.name, "seed": args.seed, "tuning": tuning.describe(),
        "list_limit": args.list_limit, "code": code_version(), "started_at": ts(now_ms), "runs": args.runs,
        "command": _command(argv if argv is not None else sys.argv[1:]),
    }, "machine": machine(), "coverage": read_coverage(args.coverage),
        "catalog_samples": scale.samples, "write_rows": scale.write_rows}
    progress(f"scale {scale.name}, seed {args.seed}, database {path}, {tuning.describe()}")
    pool = abathur_db.open(path)
    try:
        conn = tuning.apply(pool.connection())
        data = build_dataset(conn, scale, args.seed, now_ms)
        seeded = checks.sizes(conn, path)
        seeded.pop("objects", None)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        figures["dataset"] = {"counts": data.counts, "seconds": data.seconds,
                              "seconds_total": round(sum(data.seconds.values()), 1),
                              "queue": queue_summary(conn, data)}
        bench = Bench(pool, conn, path, workdir, data, build_ops(data, args.list_limit), scale,
                      random.Random(f"{args.seed}-measure"), tuning, args.seed)
        runs = []
        for run in range(1, args.runs + 1):
            if args.runs > 1:
                progress(f"run {run} of {args.runs}")
            runs.append(measure(bench))
        figures.update(combine_runs(runs))
        figures["mixed"]["runs_write_p99_ms"] = [run["mixed"]["package"]["write"]["p99_us"] / 1000 for run in runs]
        progress("query plans, integrity, sizes")
        figures["plans"] = checks.plans(conn)
        figures["sizes"] = {"after_seeding": seeded, "end": checks.sizes(conn, path)}
        figures["integrity"] = checks.integrity(conn)
    finally:
        pool.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    figures["machine"]["load_average_end"] = list(os.getloadavg())
    figures["meta"]["duration_s"] = round(time.monotonic() - began, 1)
    figures["bars"] = evaluate(figures)
    figures["success_metrics"] = success_metrics(figures)
    for b in figures["bars"]:
        status = b.get("status") or ("met" if b["met"] else "MISSED")
        print(f"{status:<6}  {b['what']}: {b['value']} (target {b['target']})")
    # Unsorted: the report lists tables, queries and sizes in the order the run recorded them.
    Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    progress(f"done in {figures['meta']['duration_s']:.0f}s; figures in {args.json}"
             + (f"; kept {workdir}" if args.keep else "")
             + f"; the report: python -m tools.benchsuite.render {args.json} -o REPORT.md")
    return 0
