"""The timed workloads, one module per family, listed in the order they run and the order they are reported.

To add a workload: write a module here with ``measure(bench) -> dict`` (its figures, ready for
JSON) and ``report(figures, md)`` (its report section, rendered from the figures alone; the queue
family keeps its verdicts and report in a module of their own, queue_report), then
add a line to MEASURED and to SECTIONS (and to BARS if it judges a SPEC §6 bar: ``bars(figures)
-> list[dict]``, and to REASONS if it explains its missed bars: ``reasons(figures) -> list[str]``).
"""

from __future__ import annotations

from . import (catalog, claims, inserts, mixed, paused_write, pickup, prune, queue, queue_report, typed_claim,
               write_cost)

# (key in the figures, progress line, function). The index cost copies the database, so it runs last.
MEASURED = (
    ("catalog", "catalog queries", catalog.measure),
    ("single_insert", "single-row inserts", inserts.measure_single),
    ("bulk_insert", "bulk inserts", inserts.measure_bulk),
    ("claim", "claim_next", claims.measure),
    ("mixed", f"{claims.THREADS} threads, 90 % reads / 10 % writes", mixed.measure),
    ("queue", "queue workloads against the minimal raw queue", queue.measure),
    ("typed_claim", "claim_next(agent_type=…) behind a backlog of other types", typed_claim.measure),
    ("pickup", "pickup latency: enqueue to claim by a waiting worker", pickup.measure),
    ("fk_cost", "foreign-key cost", write_cost.measure_foreign_keys),
    ("index_cost", "index cost (copying the database without its non-unique indexes)", write_cost.measure_indexes),
    ("prune", "writers beside audit.prune (on a copy of the database)", prune.measure),
    ("paused_write", "a write after a pause beside a process writing in a loop", paused_write.measure),
)

SECTIONS = (catalog.report, inserts.report, write_cost.report_indexes, write_cost.report_foreign_keys,
            claims.report, mixed.report, queue_report.report, typed_claim.report, pickup.report, prune.report,
            paused_write.report)

# Bars judged by the workloads' own modules, after those of verdicts.evaluate, and their explanations
# of a missed bar (verdicts.missed_reasons).
BARS = (queue_report.bars, typed_claim.bars)
REASONS = (queue_report.reasons,)
