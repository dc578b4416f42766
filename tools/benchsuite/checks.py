"""What the run checks once, untimed, at its end: the catalog's plans, integrity, the files' sizes."""

from __future__ import annotations

import os
import sqlite3

import abathur_db
from abathur_db.catalog import CATALOG

from .markdown import Markdown, mib


def plans(conn: sqlite3.Connection) -> dict:
    """Judge every catalog query's plan with the package's own check, abathur_db.check_catalog()."""
    indexes = {entry.id: list(entry.indexes) for entry in CATALOG}
    queries = {check.id: {"plan": " | ".join(check.plan), "indexes": indexes[check.id], "ok": check.ok,
                          "problems": list(check.problems),
                          "uses_index": bool(check.plan) and not any(p.startswith("does not use")
                                                                     for p in check.problems)}
               for check in abathur_db.check_catalog(conn)}
    uses = [query["uses_index"] for query in queries.values()]
    return {"queries": queries, "index_usage_rate_pct": round(100 * sum(uses) / len(uses), 1),
            "all_ok": all(query["ok"] for query in queries.values())}


def integrity(conn: sqlite3.Connection) -> dict:
    """Count foreign-key violations and run quick_check on the database as the run left it."""
    problems = abathur_db.integrity_check(conn, quick=True)
    return {"foreign_key_violations": len(abathur_db.validate_foreign_keys(conn)),
            "quick_check": problems[:5] or "ok"}


def sizes(conn: sqlite3.Connection, path: str) -> dict:
    """Return the database, WAL and shared-memory file sizes, page counts and per-object sizes."""
    def size(p):
        return os.path.getsize(p) if os.path.exists(p) else 0

    result = {
        "db_bytes": size(path),
        "wal_bytes": size(path + "-wal"),
        "shm_bytes": size(path + "-shm"),
        "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
        "page_count": conn.execute("PRAGMA page_count").fetchone()[0],
        "freelist_count": conn.execute("PRAGMA freelist_count").fetchone()[0],
    }
    try:  # dbstat is optional in SQLite builds
        result["objects"] = {name: {"bytes": pgsize, "pages": pages} for name, pgsize, pages in conn.execute(
            "SELECT name, sum(pgsize), count(*) FROM dbstat GROUP BY name ORDER BY sum(pgsize) DESC")}
    except sqlite3.Error:
        result["objects"] = None
    return result


def report_plans(figures: dict, md: Markdown) -> None:
    """Add the query-plan section: each catalog query's plan and the check's verdict."""
    pl = figures["plans"]
    md.heading("Query plans")
    md.paragraph(f"Index usage rate: {pl['index_usage_rate_pct']:.0f} % (a query uses its index when its plan uses",
                 "every index the catalog names for it). Each plan is judged by `abathur_db.check_catalog()`, as",
                 "`python -m abathur_db.verify` and the tests judge it: every named index used, no full scan, no",
                 "temporary B-tree.")
    md.table(["id", "required index", "plan", "ok"],
             [[cid, ", ".join(p["indexes"]), "`" + p["plan"] + "`",
               "yes" if p["ok"] else "**no: " + "; ".join(p["problems"]) + "**"]
              for cid, p in pl["queries"].items()])


def report_sizes(figures: dict, md: Markdown) -> None:
    """Add the database-size section and the integrity line."""
    after, end = figures["sizes"]["after_seeding"], figures["sizes"]["end"]
    md.heading("Database size")
    md.table(["", "after seeding", "end of run"], [
        ["database file", mib(after["db_bytes"]), mib(end["db_bytes"])],
        ["WAL file", mib(after["wal_bytes"]) + " (before checkpoint)", mib(end["wal_bytes"])],
        ["pages × size", f"{after['page_count']:,} × {after['page_size']}",
         f"{end['page_count']:,} × {end['page_size']}"],
    ])
    if end.get("objects"):
        md.table(["table or index", "size", "pages"],
                 [[k, mib(v["bytes"]), f"{v['pages']:,}"] for k, v in end["objects"].items()])
    integ = figures["integrity"]
    md.paragraph(f"Integrity at the end of the run: `PRAGMA foreign_key_check` {integ['foreign_key_violations']}",
                 f"violations, `PRAGMA quick_check` {integ['quick_check']}.")
