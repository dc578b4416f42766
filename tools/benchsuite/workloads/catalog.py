"""Every SPEC §5 catalog query through its package function and through raw sqlite3, one thread."""

from __future__ import annotations

import gc
import statistics

from abathur_db import catalog

from ..dataset import restore_claimed
from ..markdown import Markdown, us, x
from ..ops import Bench
from ..timing import compare, paired, progress

WARMUP = 20


def measure(bench: Bench) -> dict:
    """Time every catalog query through its package function and through raw sqlite3, interleaved."""
    progress(f"  {len(catalog.CATALOG)} queries × {bench.scale.samples} samples per side")
    conn, results = bench.conn, {}
    for entry in catalog.CATALOG:
        op = bench.ops.get(entry.id)
        if op is None:  # a catalog entry the suite does not know yet: reported, not hidden
            results[entry.id] = {"title": entry.title, "kind": None, "measured": False}
            continue
        params = [op.sample(bench.rng) for _ in range(bench.scale.samples + WARMUP)]
        rows = statistics.median_low(_row_count(_prepared(op, conn, p)) for p in params[:WARMUP])
        gc.collect()
        prepare = (lambda: op.prepare(conn)) if op.prepare else None
        package_ns, raw_ns = paired(lambda p: op.package(conn, p), lambda p: op.raw(conn, p), params, WARMUP,
                                    prepare, rng=bench.rng)
        if op.prepare:
            op.prepare.restore(conn)
        results[entry.id] = {"title": entry.title, "kind": op.kind, "measured": True, "rows": rows,
                             **compare(package_ns, raw_ns)}
        if op.kind == "write":
            restore_claimed(conn, bench.data)
    return results


def _prepared(op, conn, p):
    """Run the raw side once, after the operation's preparation if it has one; return its result."""
    if op.prepare:
        op.prepare(conn)
    return op.raw(conn, p)


def _row_count(result) -> int:
    if isinstance(result, list):
        return len(result)
    return int(result is not None)


def report(figures: dict, md: Markdown) -> None:
    """Add the catalog section: both sides' latencies, their ratios, and whether the plan passed."""
    md.heading("§5 catalog queries, one thread (µs)")
    rows = []
    for cid, c in figures["catalog"].items():
        if not c.get("measured"):
            rows.append([cid, c["title"], "not measured"] + [""] * 9)
            continue
        p, r = c["package"], c["raw"]
        rows.append([cid, c["title"], us(p["median_us"]), us(p["p95_us"]), us(p["p99_us"]), us(r["median_us"]),
                     us(r["p95_us"]), us(r["p99_us"]), x(c["time_ratio"]), x(c["p99_ratio"]),
                     "yes" if p["p99_us"] < 1000 else "**no**",
                     "yes" if figures["plans"]["queries"][cid]["ok"] else "**no**"])
    md.table(["id", "query", "package median", "p95", "p99", "raw median", "p95", "p99", "ratio (median)",
              "ratio (p99)", "p99 < 1 ms", "plan ok"], rows)
    limit = figures["meta"]["list_limit"]
    md.paragraph(f"{figures['catalog_samples']} samples per side and query; T2 and T7 are writes (each in its own "
                 "`BEGIN IMMEDIATE … COMMIT`); parameters are drawn from the data set. List queries ask for "
                 f"{limit} rows, a page (the functions' default `limit` is 100).", _row_cost(figures["catalog"]))


def _row_cost(measured: dict) -> str:
    """Return what a row of a list query cost this run, on the raw side, and what a 100-row page would."""
    per_row = [c["raw"]["median_us"] / c["rows"] for c in measured.values()
               if c.get("measured") and c["kind"] == "read" and c.get("rows", 0) >= 10]
    if not per_row:
        return ""
    low, high = min(per_row), max(per_row)
    return (f"The list queries returning 10 rows or more cost {low:.1f}–{high:.1f} µs a row here on the raw side "
            "(median time / rows returned), much of it turning rows into dicts and decoding JSON: at that rate a "
            f"100-row page takes about {low / 10:.1f}–{high / 10:.1f} ms however it is served; `--list-limit 100` "
            "measures that.")
