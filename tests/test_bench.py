"""tools/: a tiny suite run writes every figure as JSON, the report renders from it, bench.py times (no timing asserts)."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import abathur_db
from abathur_db import _checkpointer, catalog, tasks
from abathur_db import pool as pool_module
from tools.benchsuite import environment, queues, raw, render, timing, verdicts
from tools.benchsuite import run as run_module
from tools.benchsuite.dataset import SCALES
from tools.benchsuite.ops import STALE_PER_REQUEUE
from tools.benchsuite.workloads import claims, queue, queue_report
from helpers import tracing

ROOT = Path(__file__).resolve().parent.parent

TOP_LEVEL = {
    "meta", "machine", "coverage", "dataset", "catalog", "catalog_samples", "single_insert", "bulk_insert",
    "claim", "mixed", "fk_cost", "index_cost", "plans", "integrity", "sizes", "bars", "success_metrics",
    "write_rows", "queue", "typed_claim", "pickup", "prune", "paused_write",
}
STATS = {"n", "median_us", "p95_us", "p99_us", "mean_us", "min_us", "max_us", "ops_per_s"}
COMPARISON = {"package", "raw", "time_ratio", "p99_ratio", "throughput_ratio"}
BARS = {
    "catalog_p99", "overhead_reads", "overhead_writes", "single_insert", "bulk_insert", "index_cost",
    "claim_one_thread", "claim_concurrency", "mixed_p99", "seed_query_p99_10_connections",
    "queue_put", "queue_bulk", "queue_claim_1", "queue_threads", "queue_processes", "queue_wrapper", "typed_claim_p99",
}
CLAIMERS = {"workers", "claims", "duplicates", "lock_errors", "other_errors", "empty_claims", "claims_per_s", "latency"}
PHASES = ("seeded tasks", "catalog queries", "single-row inserts", "bulk inserts", "claim_next, 1 thread",
          "claim_next, 10 threads", "claim_next, 4 processes", "10 threads, 90 % reads", "foreign-key cost",
          "put: one task per commit", "bulk: N tasks in one call", "claim + complete, 1 thread",
          "claim + complete, 10 threads", "claim + complete, 3 processes × 4 threads",
          "claim + complete, 3 processes × 1 thread", "seeding 2,000 claimable tasks",
          "index cost", "query plans", "pickup latency", "pickups by a worker in another process", "an idle worker",
          "a write after a pause beside a process writing in a loop")


def _python(*args: str) -> subprocess.CompletedProcess:
    """Run the checkout's Python with `args` from the checkout root; fail with its stderr unless it exits 0."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run the suite once at tiny scale and render its report from the JSON; return figures, report, stderr."""
    tmp = tmp_path_factory.mktemp("bench")
    figures, report = tmp / "figures.json", tmp / "docs" / "report.md"
    measured = _python("-m", "tools.benchsuite", "--scale", "tiny", "--seed", "7", "--json", str(figures),
                       "--dir", str(tmp))
    _python("-m", "tools.benchsuite.render", str(figures), "-o", str(report))
    return json.loads(figures.read_text()), report.read_text(), measured.stderr


@pytest.mark.slow
def test_json_has_every_top_level_key(run):
    """The JSON holds every section of figures, under stable keys."""
    figures, _, _ = run
    assert TOP_LEVEL <= set(figures)
    assert {"cores", "memory_kib", "cpu_model", "python", "sqlite"} <= set(figures["machine"])
    assert {"scale", "seed", "tool_version", "duration_s", "command"} <= set(figures["meta"])
    assert figures["meta"]["scale"] == "tiny" and figures["meta"]["seed"] == 7


@pytest.mark.slow
def test_every_catalog_query_is_measured_against_raw(run):
    """Each SPEC §5 catalog entry has package and raw stats, their ratios, and check_plan's verdict."""
    figures, _, _ = run
    for entry in catalog.CATALOG:
        measured = figures["catalog"][entry.id]
        assert measured["measured"], entry.id
        assert COMPARISON <= set(measured), entry.id
        assert STATS <= set(measured["package"]) and STATS <= set(measured["raw"]), entry.id
        plan = figures["plans"]["queries"][entry.id]
        assert plan["ok"] and plan["uses_index"] and plan["problems"] == [], (entry.id, plan)
    assert figures["plans"]["index_usage_rate_pct"] == 100


@pytest.mark.slow
@pytest.mark.parametrize("section", ["single_insert", "bulk_insert"])
def test_inserts_are_compared(run, section):
    """Single-row and bulk inserts carry both sides' stats and the ratios."""
    figures, _, _ = run
    assert COMPARISON <= set(figures[section])


@pytest.mark.slow
@pytest.mark.parametrize("section, a, b", [("index_cost", "all_indexes_us_per_row", "keys_only_us_per_row"),
                                           ("fk_cost", "fk_on_us_per_row", "fk_off_us_per_row")])
def test_write_costs_cover_batches_and_single_rows(run, section, a, b):
    """Index and foreign-key costs are given per table, for batches and single-row commits."""
    cost = run[0][section]
    assert cost["tables"]
    for table in cost["tables"].values():
        for mode in ("batch", "single"):
            assert {a, b, "ratio", "samples"} <= set(table[mode])
    assert {"batch_all_tables_ratio", "single_all_tables_ratio", "batch_worst_table", "single_worst_table"} <= set(cost)
    if section == "index_cost":  # the same comparison through the package's insert functions
        for table in ("tasks", "audit", "checkpoints", "metrics"):
            assert {"function", a, b, "ratio", "samples"} <= set(cost["tables"][table]["package"])


@pytest.mark.slow
def test_claims_and_mix_are_counted(run):
    """claim_next from 1 thread, 10 threads and 4 processes, and the 90/10 mix per side and kind."""
    figures, _, _ = run
    claim = figures["claim"]
    assert COMPARISON <= set(claim["one_thread"])
    assert claim["one_thread"]["batch"] == min(claims.BATCH, SCALES["tiny"].claims)
    for kind in ("threads", "processes"):
        assert CLAIMERS <= set(claim[kind])
        assert claim[kind]["duplicates"] == 0  # a duplicate is a bug, whatever the machine
    for side in ("package", "raw"):
        for kind in ("read", "write"):
            assert STATS <= set(figures["mixed"][side][kind])
        assert {entry.id for entry in catalog.CATALOG} <= set(figures["mixed"][side]["per_op"])


def test_one_thread_claim_batches_are_prime_to_the_commits_between_background_checkpoints():
    """Each background checkpoint starts at another call of a package batch, not always at the same one."""
    assert claims.BATCH > 1 and math.gcd(claims.BATCH, _checkpointer.CHECKPOINT_EVERY) == 1


@pytest.mark.slow
def test_requeue_is_timed_on_stale_tasks(run):
    """The timed requeue_stale finds and requeues tasks on both sides, not an empty search."""
    assert run[0]["catalog"]["T7"]["rows"] == STALE_PER_REQUEUE


@pytest.mark.slow
@pytest.mark.parametrize("workload", [key for key, *_ in queue.WORKLOADS])
def test_queue_workloads_have_three_sides(run, workload):
    """Each queue workload reports items/s and the ratio to the minimal queue for all three sides, and the wrapper."""
    for figures in run[0]["queue"].values():
        measured = figures[workload]
        for side in queues.SIDES:
            assert measured[side]["ops_per_s"] > 0 and measured[side]["ratio_to_minimal"] > 0, side
            if workload != "bulk":
                assert {"histogram", "p99_us", "median_us"} <= set(measured[side]["latency"]), side
            if workload.startswith(("claim", "threads", "processes")):
                # Every item done once by every side: a duplicate or a lost task is a bug, whatever the machine.
                assert (measured[side]["duplicates"], measured[side]["lost"], measured[side]["other_errors"]) == (
                    0, 0, 0), (side, measured[side].get("error_examples"))
        assert measured["minimal"]["ratio_to_minimal"] == 1.0
        assert measured["package_vs_raw_schema"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["claim_1", "threads", "processes"])
def test_claim_workloads_also_run_the_fused_worker(run, workload):
    """The claim workloads also run complete_and_claim, its raw SQL, and that raw SQL under the package's lock.

    Every task is done once on each side, and each worker is counted.
    """
    for figures in run[0]["queue"].values():
        for side in ("raw_schema_fused", "raw_schema_locked", "package_fused"):
            fused = figures[workload][side]
            assert fused["ops_per_s"] > 0 and fused["ratio_to_minimal"] > 0, side
            assert (fused["duplicates"], fused["lost"], fused["other_errors"]) == (0, 0, 0), fused.get("error_examples")
        assert figures[workload]["package_fused_vs_raw_schema_fused"] > 0
        assert figures[workload]["package_fused_vs_raw_schema_locked"] > 0
        sides = queue.CLAIM_SIDES if workload == "processes" else queue.IN_PROCESS_SIDES
        assert set(sides) <= set(figures[workload]) and ("package_sqlite_wait" in figures[workload]) is (
            workload == "processes")
        if workload == "processes":
            for side in queue.PROCESSES_ONLY:
                measured = figures[workload][side]
                assert (measured["duplicates"], measured["lost"], measured["other_errors"]) == (0, 0, 0), side
            assert figures[workload]["package_sqlite_wait_vs_raw_schema_fused"] > 0
            assert figures[workload]["package_fused_vs_raw_schema_turns"] > 0
        for side in sides:
            measured = figures[workload][side]
            assert 0 <= measured["per_worker_min"] <= measured["per_worker_median"] <= measured["per_worker_max"], side
            assert measured["workers"] == {"claim_1": 1, "threads": queue.THREADS,
                                           "processes": queue.PROCESSES * queue.PROCESS_THREADS}[workload]
    (bar,) = [bar for bar in run[0]["bars"] if bar["id"] == f"queue_{workload}"]
    assert "with complete_and_claim" in bar["value"] and "with claim_next + complete" in bar["value"]
    assert "floor (raw SQL on the schema, complete + claim in one transaction)" in bar["detail"]
    if workload != "claim_1":
        assert "raw SQL under the package's in-process lock" in bar["detail"]
        assert ("raw SQL in the package's transaction blocks" in bar["detail"]) is (workload == "processes")


@pytest.mark.slow
def test_processes_of_one_thread_are_measured_on_four_sides_without_a_bar(run):
    """3 processes × 1 thread: the minimal queue, the floor, its raw SQL taking turns and the package, in the report."""
    figures, report, _ = run
    for measured in (f[queue.ONE_THREAD[0]] for f in figures["queue"].values()):
        assert set(queue.ONE_THREAD_SIDES) <= set(measured) and "package" not in measured
        for side in queue.ONE_THREAD_SIDES:
            assert measured[side]["workers"] == queue.PROCESSES and measured[side]["ops_per_s"] > 0, side
            assert (measured[side]["duplicates"], measured[side]["lost"], measured[side]["other_errors"]) == (
                0, 0, 0), (side, measured[side].get("error_examples"))
        assert measured["package_fused_vs_raw_schema_fused"] > 0 and measured["package_fused_vs_raw_schema_turns"] > 0
    assert f"| {queue.ONE_THREAD[1]} | minimal raw queue |" in report and "has no bar" in report
    assert all(not bar["id"].endswith(queue.ONE_THREAD[0]) for bar in figures["bars"])


@pytest.mark.slow
def test_wal_pages_per_item_are_counted_on_every_side(run):
    """Each side's WAL pages per put and per claim + complete are counted; the package's schema writes more."""
    for figures in run[0]["queue"].values():
        frames = figures["wal_frames"]
        assert set(frames) == set(queue.IN_PROCESS_SIDES)
        assert all(count > 0 for counts in frames.values() for count in counts.values()), frames
        assert frames["raw_schema"]["put"] > frames["minimal"]["put"]
        assert frames["raw_schema_fused"]["work"] < frames["raw_schema"]["work"]  # one commit a task, not two
    assert "WAL pages written per put and per claim + complete" in run[1]


@pytest.mark.slow
def test_pickup_latency_is_measured_in_and_across_processes(run):
    """Enqueue-to-claim times are measured with the waiting worker in this process and in another, and idle CPU."""
    pickup = run[0]["pickup"]
    for key in ("same_process", "across_processes"):
        assert pickup[key]["n"] == pickup["samples"] > 0 and {"median_us", "p99_us", "histogram"} <= set(pickup[key])
    assert pickup["idle"]["seconds"] >= 1 and pickup["idle"]["cpu_pct"] >= 0
    assert "## Pickup latency" in run[1]


@pytest.mark.slow
def test_typed_claim_is_measured_behind_a_backlog(run):
    """claim_next(agent_type=…) is timed on both sides behind the backlog, beside the untyped claim."""
    typed = run[0]["typed_claim"]
    assert typed["backlog"] == 2_000 and typed["typed_claimed"] > 0
    for key in ("typed", "untyped"):
        assert COMPARISON <= set(typed[key])


@pytest.mark.slow
def test_every_bar_is_judged(run):
    """Every SPEC §6 bar and the seed's 10-connection bar is marked met or missed."""
    bars = run[0]["bars"]
    assert {bar["id"] for bar in bars} == BARS
    assert all(isinstance(bar["met"], bool) for bar in bars)
    assert [m["metric"] for m in run[0]["success_metrics"]] == [
        "Unit test coverage", "Query latency (99th %ile)", "Index usage rate", "Foreign key violations",
        "Code review approval"]


@pytest.mark.slow
def test_writers_beside_a_prune_are_measured(run):
    """The prune workload deletes every seeded audit row and times both writers alone and beside it."""
    figures, report, stderr = run
    prune = figures["prune"]
    assert prune["deleted"] == figures["dataset"]["counts"]["audit"]
    for kind in ("thread", "process"):
        writer = prune["writers"][kind]
        assert STATS <= set(writer["alone"]) and STATS <= set(writer["beside_prune"]), kind
        assert writer["alone"]["n"] > 0 and writer["beside_prune"]["n"] > 0, kind
    assert "## Retention: a writer beside audit.prune" in report
    assert f"deleted {prune['deleted']:,} audit rows" in report
    assert "writers beside audit.prune" in stderr


@pytest.mark.slow
def test_paused_writes_beside_a_loop_are_measured_on_both_sides(run):
    """Each side times every paused write, counts its lock errors and the looping writer's pace."""
    figures, report, _ = run
    paused = figures["paused_write"]
    assert paused["writes"] == 3 and paused["gap_s"] > pool_module.BUSY_SECONDS
    for side in ("package", "raw"):
        assert paused[side]["latency"]["n"] == paused["writes"] and STATS <= set(paused[side]["latency"]), side
        assert paused[side]["loop_writes_per_s"] > 0 and isinstance(paused[side]["lock_errors"], int), side
    assert paused["package"]["lock_errors"] == 0  # raw's wait may outlast busy_timeout, rarely
    assert "## A write after a pause, beside a process writing in a loop" in report
    assert f"records one every {paused['gap_s']} s" in report


@pytest.mark.slow
def test_data_set_has_the_described_shape(run):
    """The seeded queue is ~25 % pending, its most urgent pending tasks are blocked, links exist."""
    queue = run[0]["dataset"]["queue"]
    assert 15 <= queue["pending_pct"] <= 40
    assert queue["blocked_pending"] >= queue["blocked_block"] > 0
    assert queue["without_session"] > 0 and queue["with_parent"] > 0 and queue["with_dependencies"] > 0
    assert run[0]["integrity"]["foreign_key_violations"] == 0


@pytest.mark.slow
def test_report_is_rendered_from_the_json(run):
    """The report rendered from the saved JSON has the bars, the seed's metrics and a row per catalog query."""
    figures, report, _ = run
    for heading in ("## Machine and run", "## SPEC §6 bars", "## Seed success metrics",
                    "## §5 catalog queries, one thread", "## Write cost of the indexes", "## claim_next",
                    "## 10 threads, 90 % reads / 10 % writes", "## Queue workloads against the minimal raw queue",
                    "## claim_next(agent_type=…) behind 2,000", "## Query plans", "## Database size"):
        assert heading in report
    for entry in catalog.CATALOG:
        assert f"| {entry.id} |" in report
    assert "not measured in this run" in report  # no --coverage given
    assert f"the sides alternating every {figures['claim']['one_thread']['batch']} calls" in report
    assert "`python -m tools.benchsuite.render figures.json`" in report
    assert report == render.render(figures, "figures.json") + "\n"


@pytest.mark.slow
def test_missed_bars_are_explained_from_the_figures(run):
    """The reasons for missed bars quote the run's machine and figures, never fixed wording."""
    figures = copy.deepcopy(run[0])
    figures["machine"]["cores"] = 3
    for bar in figures["bars"]:
        bar["met"] = bar["id"] not in {"overhead_writes", "mixed_p99"}
    reasons = " ".join(verdicts.missed_reasons(figures))
    assert "3 cores" in reasons and "10 busy threads" in reasons and "two cores" not in reasons
    writes = {k: v["time_ratio"] for k, v in figures["catalog"].items() if v["kind"] == "write"}
    writes["single insert"] = figures["single_insert"]["time_ratio"]
    assert f"the worst write, {max(writes, key=writes.get)}," in reasons
    assert "Why the missed bars are missed" in render.render(figures)


@pytest.mark.slow
def test_a_progress_line_per_workload(run):
    """Each workload announces itself on stderr."""
    _, _, stderr = run
    for phase in PHASES:
        assert phase in stderr, phase


def test_timeit_bench_compares_every_catalog_query():
    """tools/bench.py times each catalog query and both inserts on both sides, then checks the plans."""
    out = _python("tools/bench.py", "--scale", "tiny", "--number", "3", "--repeat", "1").stdout
    for name in [entry.id for entry in catalog.CATALOG] + ["insert", "bulk"]:
        assert any(line.split()[:1] == [name] and line.rstrip().endswith("x") for line in out.splitlines()), name
    assert f"query plans: {len(catalog.CATALOG)} of {len(catalog.CATALOG)} catalog queries use their index" in out
    assert "foreign-key violations: 0" in out
    # The requeue is timed on calls that each find stale tasks, never on a search that finds none.
    assert any(line.split()[:1] == ["T7"] and f": {STALE_PER_REQUEUE} stale tasks taken back a call" in line
               for line in out.splitlines()), out


@pytest.mark.parametrize("kind", ["json", "xml"])
def test_coverage_report_is_read(tmp_path, kind):
    """--coverage reads the total from coverage.py's JSON or XML report."""
    path = tmp_path / f"coverage.{kind}"
    if kind == "json":
        path.write_text(json.dumps({"totals": {"percent_covered": 93.456}}))
    else:
        path.write_text('<?xml version="1.0" ?><coverage line-rate="0.9346" branch-rate="0.9"></coverage>')
    assert environment.read_coverage(str(path))["percent"] == pytest.approx(93.5)
    assert environment.read_coverage(None)["percent"] is None


def test_the_recorded_command_names_no_folder_of_the_machine(tmp_path):
    """The command a report quotes keeps options and file names, never the folders they were in."""
    argv = ["--scale", "large", "--json", str(tmp_path / "bench.json"), f"--coverage={tmp_path / 'cov.json'}",
            "--dir", str(tmp_path) + os.sep, "--runs", "5"]
    assert run_module._command(argv) == ("python -m tools.benchsuite --scale large --json bench.json"
                                         f" --coverage=cov.json --dir {tmp_path.name} --runs 5")


def test_paired_spreads_a_periodic_slow_call_over_both_sides(monkeypatch):
    """Every 4th call is slow (as a commit taking the WAL past wal_autocheckpoint every few pairs):
    the drawn order puts it on both sides, where alternating the first side put it on one."""
    seed = 11
    print(f"order seed {seed}")
    clock, calls = [0], [0]

    def side(_):
        calls[0] += 1
        clock[0] += 100 if calls[0] % 4 == 0 else 1

    monkeypatch.setattr(timing, "CLOCK", lambda: clock[0])
    package_ns, raw_ns = timing.paired(side, side, [None] * 400, rng=random.Random(seed))
    slow_package, slow_raw = package_ns.count(100), raw_ns.count(100)
    assert len(package_ns) == len(raw_ns) == 400 and slow_package + slow_raw == 200
    assert 70 <= slow_package <= 130, (slow_package, slow_raw)


def test_runs_pool_latency_samples():
    """Several runs' per-task p99 is the p99 of all their samples (to the 1 % bucket), not a median of p99s."""
    fast = [100_000 + k for k in range(1000)]  # 0.1 ms
    slow = [100_000 + k for k in range(900)] + [50_000_000] * 100  # 10 % at 50 ms
    pooled = timing.combine_runs([timing.latency(fast), timing.latency(fast), timing.latency(slow)])
    # 100 of 3,000 samples (3.3 %) are slow, so the pooled p99 is slow; a median of p99s would be fast.
    assert pooled["n"] == 3000 and pooled["pooled_runs"] == 3
    assert pooled["p99_us"] == pytest.approx(50_000, rel=0.01)
    assert pooled["median_us"] == pytest.approx(100.5, rel=0.01)


def test_runs_pool_both_sides_samples_of_a_comparison_and_take_the_median_of_their_ratios():
    """A package/raw comparison over runs pools each side's samples (a catalog query's p99 bar is judged on
    every sample), while its ratios stay the medians of the runs' side-by-side ratios."""
    fast = [100_000 + k for k in range(1000)]
    slow = [100_000 + k for k in range(900)] + [5_000_000] * 100  # 10 % at 5 ms
    runs = [timing.compare(fast, fast), timing.compare(fast, fast), timing.compare(slow, fast)]
    combined = timing.combine_runs(runs)
    assert combined["package"]["pooled_runs"] == 3 and combined["package"]["n"] == 3000
    assert combined["package"]["p99_us"] == pytest.approx(5_000, rel=0.01)  # a median of p99s: 0.1 ms
    assert combined["raw"]["p99_us"] == pytest.approx(101, rel=0.01)
    assert combined["p99_ratio"] == 1.0  # the runs' own: 1.0, 1.0, ~50


def test_raw_decoding_skips_the_parser_for_empty_json(monkeypatch):
    """The raw side decodes "[]" and "{}" without json.loads, as the package does, so it does no extra work."""
    monkeypatch.setattr(raw.json, "loads", lambda text: pytest.fail(f"parsed {text!r}"))
    assert raw.decode(("[]", "{}", None), ("a", "b", "c"), ("a", "b", "c")) == {"a": [], "b": {}, "c": None}


def _sides(package: float, floor: float, minimal: float = 10_000, p99_ms: float = 1, idle: int = 0) -> dict:
    """Return one claim workload's figures: the given items/s of the package and its floor, the rest fixed."""
    def side(ops, workers_idle=0):
        return {"ops_per_s": ops, "ratio_to_minimal": round(ops / minimal, 3),
                "latency": {"p99_us": p99_ms * 1000, "max_us": p99_ms * 2000},
                "duplicates": 0, "lost": 0, "lock_errors": 0, "other_errors": 0, "idle_workers": workers_idle,
                "per_worker_min": 0 if workers_idle else 1, "per_worker_max": 9}
    return queue._with_ratios({"minimal": side(minimal), "raw_schema": side(floor), "package": side(package),
                               "raw_schema_fused": side(floor), "package_fused": side(package, idle)})


def _reasons(workloads: dict) -> list[str]:
    """Return the reasons given for the queue bars that `workloads` (figures at N = 5,000) miss."""
    figures = {"queue": {"5000": workloads}}
    figures["bars"] = queue_report.bars(figures)
    return queue_report.reasons(figures)


@pytest.mark.parametrize("package, floor, p99_ms, idle, status", [
    (6_000, 7_000, 1, 0, "met"),  # 0.6x: the bar itself
    (2_900, 3_000, 1, 0, "out of reach on this schema; within 10 % of the floor"),
    (2_500, 3_000, 1, 0, "MISSED; out of reach on this schema"),  # 0.83x of the floor
    (5_500, 7_000, 1, 0, "MISSED"),  # the floor reaches the bar, the package does not
    (2_900, 3_000, 1, 1, "MISSED; out of reach on this schema"),  # a worker that did nothing
])
def test_queue_bars_judge_the_package_against_the_bar_then_the_floor(package, floor, p99_ms, idle, status):
    """A queue bar is met, or out of reach when the floor misses it too (then held to 90 % of it), or missed."""
    workloads = {key: _sides(package, floor, p99_ms=p99_ms, idle=idle) for key, *_ in queue.WORKLOADS}
    bars = {bar["id"]: bar for bar in queue_report.bars({"queue": {"5000": workloads}})}
    judged = bars["queue_threads"] if idle else bars["queue_claim_1"]  # idle workers only count where a p99 does
    assert judged["status"] == status
    assert judged["met"] is (status == "met") and judged["floor_met"] is status.startswith(("met", "out of reach"))
    assert f"package {package / floor:.2f}x of it" in judged["detail"]


@pytest.mark.parametrize("side_class", [queues.LockedFusedSchemaQueue, queues.TurnsFusedSchemaQueue])
def test_a_raw_side_scheduled_as_the_package_holds_its_lock_at_every_begin(tmp_path, side_class):
    """raw_schema_locked and raw_schema_turns send the floor's statements holding the file's in-process write
    lock at every BEGIN, and give it back after each call."""
    path = str(tmp_path / "scheduled.db")
    side_class.create(path)
    side = side_class(path)
    conn = side.connection()
    side.bulk(conn, queues.items(3))
    lock = pool_module._write_lock(path)
    sent, held_at_begin = [], []
    conn.set_trace_callback(lambda sql: sent.append(sql) or held_at_begin.append(lock.holder is conn)
                            if sql == "BEGIN IMMEDIATE" else sent.append(sql))
    done = [side.work_one(conn) for _ in range(4)]
    conn.set_trace_callback(None)
    side.close()
    assert done[3] is None and len(set(done[:3])) == 3  # each task once, then an empty queue
    assert len(held_at_begin) == 5 and all(held_at_begin)  # a first claim, then three complete + claim, one empty
    assert [sql.split()[0] for sql in sent].count("COMMIT") == 5
    assert {sql.split(",")[0] for sql in sent if not sql.startswith(("BEGIN", "COMMIT", "PRAGMA"))} == {
        "UPDATE tasks SET status = 'running'", "UPDATE tasks SET status = 'completed'"}  # the claim and the complete
    assert lock.holder is None and not lock.waiting


def test_a_side_waiting_in_sqlites_busy_handler_sets_the_knob_only_while_open(tmp_path):
    """package_sqlite_wait turns BEGIN's steps and turns off in its process while open, its first moments'
    included, and back on at close."""
    module = queues.pool
    knobs = queues.SQLiteWaitPackageQueue.KNOBS
    before = [getattr(module, name) for name in knobs]
    path = str(tmp_path / "wait.db")
    with pytest.MonkeyPatch.context() as patch:  # as in a benchmark worker: the side is the process's first writer
        for name in knobs:
            patch.setattr(module, name, 0)
        queues.SQLiteWaitPackageQueue.create(path)
    side = queues.SQLiteWaitPackageQueue(path)
    try:
        assert [getattr(module, name) for name in knobs] == [0, 0, 0, 0]
        conn = side.connection()
        with tracing(conn) as sent:
            side.bulk(conn, queues.items(2))
            assert [side.work_one(conn) is None for _ in range(3)] == [False, False, True]
        assert not [sql for sql in sent if sql.startswith("PRAGMA")], sent
    finally:
        side.close()
    side.close()  # the processes workload closes it twice: the value stays given back
    assert [getattr(module, name) for name in knobs] == before and min(before) > 0


def test_a_missed_processes_bar_quotes_the_package_waiting_as_raw_does():
    """The processes reason gives the package's figures with its BEGIN waiting in SQLite's busy handler."""
    workloads = {key: _sides(2_500, 3_000) for key, *_ in queue.WORKLOADS}
    processes = workloads["processes"]
    processes["package_sqlite_wait"] = {**processes["package_fused"], "ops_per_s": 2_700, "ratio_to_minimal": 0.27,
                                        "latency": {"p99_us": 25_300, "max_us": 1_037_000}}
    processes["package_sqlite_wait_vs_raw_schema_fused"] = 0.9  # 2,700 against the floor's 3,000
    reasons = _reasons(workloads)
    (reason,) = [r for r in reasons if "3 processes" in r]
    assert ("the package waiting in SQLite's busy handler too"
            " (pool.BUSY_SECONDS, FIRST_SECONDS, PAUSE_STEPS and ARRIVAL_SECONDS at 0) reaches 0.27x, 0.90x of the floor, at a per-task p99 of 25.3 ms"
            " (1–9 tasks a worker, 0 idle, slowest call 1,037 ms)") in reason
    assert "the package's processes take turns of _turn.TURN_SECONDS while others wait" in reason
    assert "in the package's transaction blocks" not in reason  # only where that side ran
    (threads,) = [r for r in reasons if "10 threads" in r]
    assert "busy handler too" not in threads and "take turns" not in threads


def test_a_missed_processes_bar_quotes_the_floors_statements_scheduled_as_the_package():
    """The processes reason and detail give raw SQL in the package's transaction blocks, and the package's share of it."""
    workloads = {key: _sides(2_500, 3_000) for key, *_ in queue.WORKLOADS}
    workloads["processes"]["raw_schema_turns"] = {**workloads["processes"]["raw_schema_fused"], "ops_per_s": 2_600,
                                                  "ratio_to_minimal": 0.26, "latency": {"p99_us": 1, "max_us": 41_000}}
    workloads["processes"]["package_fused_vs_raw_schema_turns"] = 0.96  # 2,500 against 2,600
    reasons = _reasons(workloads)
    (reason,) = [r for r in reasons if "3 processes" in r]
    assert ("raw SQL in the package's transaction blocks, so scheduled as the package is (its in-process lock, its"
            " turns), reaches 0.26x (1–9 tasks a worker, 0 idle, slowest call 41 ms), and the package 0.96x of that")\
        in reason
    bars = {bar["id"]: bar for bar in queue_report.bars({"queue": {"5000": workloads}})}
    assert "raw SQL in the package's transaction blocks 0.26x, package 0.96x of it" in bars["queue_processes"]["detail"]
    assert "transaction blocks" not in bars["queue_threads"]["detail"]


def test_a_missed_concurrent_queue_bar_compares_the_floor_with_the_floor_on_one_thread():
    """The floor's workers together are set against the floor's own statements on one thread."""
    workloads = {key: _sides(2_500, 3_000) for key, *_ in queue.WORKLOADS}
    workloads["claim_1"]["raw_schema_fused"]["ops_per_s"] = 3_300
    reasons = _reasons(workloads)
    (threads,) = [r for r in reasons if "10 threads" in r]
    assert ("the floor's workers together do 3,000 tasks a second, 0.91x of its 3,300 on one thread: one writer"
            " at a time, however many wait") in threads
    assert not any("together do" in r for r in reasons if "1 thread," in r)


def test_a_queue_bar_missed_at_one_n_is_explained_at_that_n_only():
    """Met at N = 5,000 and missed at N = 50,000: one reason, for N = 50,000, and no empty one."""
    met = {key: _sides(6_000, 7_000) for key, *_ in queue.WORKLOADS}
    missed = {key: _sides(2_500, 3_000) for key, *_ in queue.WORKLOADS}
    figures = {"queue": {"5000": met, "50000": missed}}
    figures["bars"] = queue_report.bars(figures)
    about_threads = [r for r in queue_report.reasons(figures) if "10 threads" in r]
    assert len(about_threads) == 1 and "N=50,000: the floor itself" in about_threads[0]


def test_a_missed_concurrent_queue_bar_names_each_sides_workers():
    """A missed threads or processes bar quotes how many tasks each side's workers did, and each side's slowest call."""
    workloads = {key: _sides(2_500, 3_000) for key, *_ in queue.WORKLOADS}
    workloads["threads"]["raw_schema_fused"].update(per_worker_min=0, idle_workers=4)
    workloads["threads"]["raw_schema_fused"]["latency"]["max_us"] = 1_932_554
    reasons = _reasons(workloads)
    (threads,) = [r for r in reasons if "10 threads" in r]
    assert ("the floor's workers: 0–9 tasks a worker, 4 idle, slowest call 1,933 ms; the package's: 1–9 tasks a"
            " worker, 0 idle, slowest call 2 ms") in threads
    assert not any("floor's workers" in r for r in reasons if "1 thread," in r)


@pytest.mark.parametrize("raw_p99_us, p99_ratio, whose", [
    (4_000, 1.16, "misses it too"),
    (600, 7.7, "the tail is the package's"),
    (600, 1.09, "the package's p99 was 1.09x raw's (the median of the runs' ratios): the tail comes and goes"),
])
def test_a_query_over_its_p99_bar_is_explained_against_raw(raw_p99_us, p99_ratio, whose):
    """A catalog query over 1 ms at p99 is explained by its median and both sides' p99, and whose tail it is.

    Each p99 is the median of the runs' p99s; the runs' own ratios tell a tail of one side from one of both.
    """
    figures = {"bars": [{"id": "catalog_p99", "met": False}], "queue": {},
               "catalog": {"T7": {"measured": True, "kind": "write", "package": {"median_us": 107, "p99_us": 4_634},
                                  "raw": {"median_us": 98, "p99_us": raw_p99_us}, "p99_ratio": p99_ratio},
                           "T1": {"measured": True, "kind": "read", "package": {"median_us": 9, "p99_us": 20},
                                  "raw": {"median_us": 9, "p99_us": 20}}}}
    (reason,) = [r for r in verdicts.missed_reasons(figures) if r.startswith("T")]
    assert reason.startswith("T7 (a write, committed at each call): median 107 µs, p99 4.6 ms")
    assert f"and {raw_p99_us / 1000:.1f} ms raw" in reason and whose in reason


def test_share_at_least_counts_the_samples_at_or_over_a_duration():
    """share_at_least() gives the percentage of samples at or over a duration, from the histogram, to 1 %."""
    figures = timing.latency([100_000] * 97 + [1_000_000, 3_000_000, 5_000_000])
    assert timing.share_at_least(figures, 1000) == 3.0
    assert timing.share_at_least(figures, 4000) == 1.0
    assert timing.share_at_least(figures, 50) == 100.0
    assert timing.share_at_least({"p99_us": 1}, 1000) is None


@pytest.mark.parametrize("package_slow, raw_slow, whose", [
    (12, 9, "1.2 % of the package's calls took 1 ms or more and 0.9 % of raw's: both sides have the tail"),
    (30, 2, "the tail is the package's (3.0 % of its calls took 1 ms or more, 0.2 % of raw's)"),
])
def test_a_p99_over_the_bar_says_how_many_calls_of_each_side_reached_it(package_slow, raw_slow, whose):
    """With both sides' histograms, a query's p99 over 1 ms is explained by the share of each side's calls over it."""
    def side(slow):
        return timing.latency([200_000] * (1000 - slow) + [3_000_000] * slow)

    package, raw = side(package_slow), side(raw_slow)
    package["p99_us"], raw["p99_us"] = 3000, 600
    figures = {"bars": [{"id": "catalog_p99", "met": False}], "queue": {},
               "catalog": {"T7": {"measured": True, "kind": "write", "package": package, "raw": raw,
                                  "p99_ratio": 5.0}}}
    (reason,) = [r for r in verdicts.missed_reasons(figures) if r.startswith("T7")]
    assert whose in reason


def test_every_call_of_a_queue_worker_is_timed(tmp_path):
    """A worker's final, empty claim is timed with the others, and each worker's count is reported."""
    class Queue:
        def __init__(self):
            self.left = 3

        def work_one(self, conn):
            self.left -= 1
            return None if self.left < 0 else f"task {self.left}"

    done = queue._work(Queue(), None)
    assert done["ids"] == ["task 2", "task 1", "task 0"] and len(done["times"]) == 4
    summary = queue._summary([done, {**done, "ids": []}], 3, done["ended"] - 1)
    assert (summary["per_worker_min"], summary["per_worker_max"], summary["idle_workers"]) == (0, 3, 1)


def _statements(conn, call) -> list[str]:
    """Return the statements `call()` sends on `conn`, every literal (the trace expands bound values) masked."""
    with tracing(conn) as sent:
        call()
    return [re.sub(r"'(?:[^']|'')*'|\b\d+\b", "?", " ".join(s.split())) for s in sent if not s.startswith("PRAGMA")]


@pytest.mark.parametrize("operation", ["put", "work_one"])
def test_raw_schema_side_sends_the_package_statements(tmp_path, operation):
    """Raw SQL on the package's schema sends the very statements the package sends, so only the Python differs."""
    sides = {}
    for name in ("raw_schema", "package"):
        path = str(tmp_path / f"{name}.db")
        queues.SIDES[name].create(path)
        side = queues.SIDES[name](path)
        conn = side.connection()
        side.bulk(conn, queues.items(3))
        call = (lambda: side.put(conn, ("x" * 90, 3))) if operation == "put" else (lambda: side.work_one(conn))
        sides[name] = _statements(conn, call)
        side.close()
    assert sides["raw_schema"] == sides["package"]
    assert sides["package"][0] == "BEGIN IMMEDIATE" and sides["package"][-1] == "COMMIT"


def test_every_side_claims_in_priority_order(tmp_path):
    """Each queue side puts, claims the most urgent item first and completes it; an empty queue claims nothing."""
    for name, side_class in queues.SIDES.items():
        path = str(tmp_path / f"{name}.db")
        side_class.create(path)
        side = side_class(path)
        conn = side.connection()
        side.bulk(conn, queues.items(3))  # priorities 0, 1, 2
        urgent = side.put(conn, ("urgent", 9))
        done = [side.work_one(conn) for _ in range(5)]
        assert done[0] == ("4" if name == "minimal" else urgent["id"]), name  # the minimal queue's 4th row
        assert done[-1] is None and None not in done[:4] and len(set(done[:4])) == 4, name
        side.close()
    conn = abathur_db.connect(str(tmp_path / "package.db"))
    assert {row[0] for row in conn.execute("SELECT status FROM tasks")} == {"completed"}
    assert tasks.get(conn, done[0])["result_data"] == queues.RESULT
    conn.close()
