"""Render the Markdown report from a saved JSON of figures: ``python -m tools.benchsuite.render FILE``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import checks
from .markdown import Markdown
from .verdicts import missed_reasons
from .workloads import SECTIONS


def render(figures: dict, source: str = "FIGURES.json") -> str:
    """Return the report of `figures` (the suite's JSON, loaded) as Markdown; `source` names the file."""
    meta = figures["meta"]
    md = Markdown()
    md.paragraph("# Performance baseline — milestone 1")
    md.paragraph(f"Measured by `{meta['command']}` on {meta['started_at']} (tool version {meta['tool_version']});",
                 f"rendered from its figures by `python -m tools.benchsuite.render {source}`.",
                 "Do not edit by hand: run both again.")
    runs = meta.get("runs", 1)
    md.paragraph(
        *([f"Each figure is the median of {runs} runs of every timed workload on the same data set, except"
           " latency percentiles, which pool every run's samples (1 % buckets), and counts of duplicates and"
           " errors, their sum over the runs."] if runs > 1 else []),
        "Method: each figure is measured with the package and raw `sqlite3` interleaved (per call, the side that",
        "runs first drawn from the run's seed, or in alternating batches), raw running the same SQL and doing",
        "the same work (rows to dicts, JSON decoded; ids and timestamps from the same helpers). Single-thread",
        "comparisons run both sides on the same connection, so only the code differs (a write through another",
        "connection would empty this one's page cache). Ratios are package/raw of medians: a time ratio above 1",
        "means the package is slower, a throughput ratio (raw median time / package median time) below 1 the",
        "same. Machines are noisy: compare ratios, and medians of several runs.")
    _machine(figures, md)
    _dataset(figures, md)
    _verdicts(figures, md)
    for section in SECTIONS:
        section(figures, md)
    checks.report_plans(figures, md)
    checks.report_sizes(figures, md)
    return md.text()


def _machine(figures: dict, md: Markdown) -> None:
    m, meta, code = figures["machine"], figures["meta"], figures["meta"]["code"]
    md.heading("Machine and run")
    md.table(["", ""], [
        ["CPU", f"{m['cpu_model']} — {m['cores']} cores"],
        ["Memory", f"{m['memory_kib'] / 1024 / 1024:.1f} GiB" if m["memory_kib"] else "unknown"],
        ["Python / SQLite", f"{m['python']} / {m['sqlite']}"],
        ["Platform", m["platform"]],
        ["Load average (1, 5, 15 min) at start → end",
         f"{', '.join(f'{v:.2f}' for v in m['load_average_start'])} → "
         f"{', '.join(f'{v:.2f}' for v in m['load_average_end'])}"],
        ["Scale / seed / list page size", f"{meta['scale']} / {meta['seed']} / {meta['list_limit']} rows"],
        ["Code", f"commit {code['commit']}" + (f", with uncommitted changes to {', '.join(code['uncommitted_changes'])}"
                                               if code["uncommitted_changes"] else "")],
        ["Connection tuning", meta["tuning"]],
        ["Run time", f"{meta['duration_s']:.0f} s (seeding {figures['dataset']['seconds_total']:.0f} s)"],
    ])


def _dataset(figures: dict, md: Markdown) -> None:
    ds, q = figures["dataset"], figures["dataset"]["queue"]
    md.heading("Data set")
    md.table(["table", "rows", "seeded in (s)"], [[k, f"{v:,}", ds["seconds"][k]] for k, v in ds["counts"].items()])
    md.paragraph(f"Tasks by status: {', '.join(f'{k} {v:,}' for k, v in q['by_status'].items())}",
                 f"({q['pending_pct']:.1f} % pending). {q['blocked_pending']:,} pending tasks wait on unfinished",
                 f"dependencies, among them the {q['blocked_block']:,} most urgent pending tasks (priority 10,",
                 f"oldest), which every claim must step over; {q['claimable']:,} tasks are claimable.",
                 f"{q['without_session']:,} tasks have no session, {q['with_parent']:,} have a parent,",
                 f"{q['with_dependencies']:,} have dependencies.")


def _verdicts(figures: dict, md: Markdown) -> None:
    md.heading("SPEC §6 bars")
    md.table(["bar", "target", "measured", "status", "detail"],
             [[b["what"], b["target"], b["value"], f"**{b.get('status') or ('met' if b['met'] else 'MISSED')}**",
               b["detail"]] for b in figures["bars"]])
    reasons = missed_reasons(figures)
    if reasons:
        md.paragraph("Why the missed bars are missed, from this run's own figures:")
        md.bullets(reasons)
    md.heading("Seed success metrics")
    md.table(["Metric", "Target", "Actual", "Status"],
             [[s["metric"], s["target"], s["actual"], s["status"]] for s in figures["success_metrics"]])


def main(argv: list[str] | None = None) -> int:
    """Read the figures' JSON, write the report to -o FILE (or print it); return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m tools.benchsuite.render", description=__doc__.split(":")[0])
    parser.add_argument("figures", metavar="FIGURES.json", help="the JSON that python -m tools.benchsuite wrote")
    parser.add_argument("-o", "--output", metavar="REPORT.md", help="where to write the report (default: stdout)")
    args = parser.parse_args(argv)
    text = render(json.loads(Path(args.figures).read_text()), Path(args.figures).name) + "\n"
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
