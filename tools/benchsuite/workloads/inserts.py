"""Task inserts: one row per transaction, and many rows in one."""

from __future__ import annotations

import gc

from ..markdown import Markdown, per_s, us, x
from ..ops import Bench, create_many, raw_executemany
from ..timing import compare, paired

WARMUP = 20


def measure_single(bench: Bench) -> dict:
    """Time single-row task inserts, each in its own transaction: tasks.create vs raw BEGIN/INSERT/COMMIT."""
    op, conn = bench.ops["insert_task"], bench.conn
    params = [op.sample(bench.rng) for _ in range(bench.scale.samples + WARMUP)]
    gc.collect()
    return compare(*paired(lambda p: op.package(conn, p), lambda p: op.raw(conn, p), params, WARMUP,
                           rng=bench.rng))


def measure_bulk(bench: Bench) -> dict:
    """Time bulk task inserts in one transaction: tasks.create_many vs raw executemany."""
    op, conn, rows = bench.ops["insert_task"], bench.conn, bench.scale.bulk_rows
    batches = [[op.sample(bench.rng) for _ in range(rows)] for _ in range(bench.scale.bulk_batches + 1)]
    gc.collect()
    # A batch dirties enough pages that every other commit or so crosses wal_autocheckpoint, and an
    # alternating order (P R R P P R …) landed those checkpoints on one side: the ratio swung between
    # 0.74x and 1.14x from one repeat to the next. Emptying the WAL, untimed, before every batch
    # leaves each side to pay only for its own pages (0.94-0.99x over the same repeats).
    package_ns, raw_ns = paired(lambda b: create_many(conn, b), lambda b: raw_executemany(conn, b), batches, 1,
                                lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(), rng=bench.rng)
    result = {"rows_per_batch": rows, **compare(package_ns, raw_ns)}
    result["package_rows_per_s"] = round(rows * 1e6 / result["package"]["median_us"], 1)
    result["raw_rows_per_s"] = round(rows * 1e6 / result["raw"]["median_us"], 1)
    return result


def report(figures: dict, md: Markdown) -> None:
    """Add the inserts section: single rows and bulk, package against raw."""
    si, bi = figures["single_insert"], figures["bulk_insert"]
    md.heading("Inserts")
    md.table(["", "package", "raw", "ratio"], [
        ["single-row insert + commit: median µs", us(si["package"]["median_us"]), us(si["raw"]["median_us"]),
         x(si["time_ratio"])],
        ["single-row: p95 / p99 µs", f"{us(si['package']['p95_us'])} / {us(si['package']['p99_us'])}",
         f"{us(si['raw']['p95_us'])} / {us(si['raw']['p99_us'])}", ""],
        ["single-row: rows/s (from the median; from the mean)",
         f"{per_s(si['package'])}; {si['package']['ops_per_s']:,.0f}",
         f"{per_s(si['raw'])}; {si['raw']['ops_per_s']:,.0f}", x(si["throughput_ratio"])],
        [f"bulk, {bi['rows_per_batch']:,} rows per transaction: median ms per batch",
         f"{bi['package']['median_us'] / 1000:.1f}", f"{bi['raw']['median_us'] / 1000:.1f}", x(bi["time_ratio"])],
        ["bulk: rows/s (from the median batch)", f"{bi['package_rows_per_s']:,.0f}", f"{bi['raw_rows_per_s']:,.0f}",
         x(bi["throughput_ratio"])],
    ])
    md.paragraph("Single row: `tasks.create` vs raw `BEGIN IMMEDIATE; INSERT … RETURNING; COMMIT` and decode.",
                 "Bulk: `tasks.create_many` (every task checked, one INSERT each, one transaction) vs raw",
                 "`executemany` of the same INSERT in one transaction.")
